"""The config's documentation, rendered from the one place it is written: the ``Field`` descriptions of
:mod:`aline.config`.

``configs/train.yaml`` is :func:`defaults_yaml` (regenerate it with
``python -m aline.config_doc > configs/train.yaml``; a test checks the two agree), and
``python -m aline.train --help`` lists :func:`keys_help`.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel

from aline.config import Config

WIDTH = 110
HEADER = """\
The built-in defaults of python -m aline.train, one key per line with its description. Generated from
aline/config.py by `python -m aline.config_doc > configs/train.yaml`: edit the descriptions there. Every
key is optional; override any on the command line (optim.lr=3e-4) or in your own file (--config).
"""


@dataclass(frozen=True)
class KeyDoc:
    key: str  # dotted, e.g. "optim.lr"
    default: Any  # as YAML would hold it (JSON types)
    description: str


def _section(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def describe(model: type[BaseModel] = Config, prefix: str = "") -> list[KeyDoc]:
    """Every leaf key of ``model`` in declaration order, with its default and description."""
    defaults = model().model_dump(mode="json")
    out = []
    for name, field in model.model_fields.items():
        sub = _section(field.annotation)
        if sub is not None:
            out += describe(sub, f"{prefix}{name}.")
        else:
            out.append(KeyDoc(prefix + name, defaults[name], field.description or ""))
    return out


def _value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _comment(text: str, indent: str) -> list[str]:
    width = WIDTH - len(indent) - 2
    return [f"{indent}# {line}" for line in textwrap.wrap(text, width, break_on_hyphens=False)]


def _section_lines(model: type[BaseModel], depth: int) -> list[str]:
    indent = "  " * depth
    defaults = model().model_dump(mode="json")
    lines: list[str] = []
    for name, field in model.model_fields.items():
        sub = _section(field.annotation)
        if sub is not None:
            if depth == 0:
                lines.append("")
            lines += _comment(" ".join((sub.__doc__ or "").split("\n\n")[0].split()), indent)
            lines.append(f"{indent}{name}:")
            lines += _section_lines(sub, depth + 1)
        else:
            lines += _comment(field.description or "", indent)
            value = defaults[name]
            line = f"{indent}{name}: {_value(value)}"
            if isinstance(value, list) and len(line) > WIDTH:  # one item a line rather than a long one
                lines.append(f"{indent}{name}:")
                lines += [f"{indent}  - {_value(item)}" for item in value]
            else:
                lines.append(line)
    return lines


def defaults_yaml() -> str:
    """``configs/train.yaml``: every key at its default, each under its description."""
    head = [f"# {line}" if line else "#" for line in HEADER.splitlines()]
    return "\n".join(head + [""] + _section_lines(Config, 0)) + "\n"


def keys_help() -> str:
    """Every key, its default and its description, for ``--help``."""
    lines = ["configuration keys (KEY=VALUE; default in brackets):"]
    for doc in describe():
        lines.append(f"  {doc.key} [{_value(doc.default)}]")
        lines += textwrap.wrap(
            doc.description,
            WIDTH,
            initial_indent="      ",
            subsequent_indent="      ",
            break_on_hyphens=False,
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(defaults_yaml(), end="")
