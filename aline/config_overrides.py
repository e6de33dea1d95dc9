"""Config text in, config messages out: ``key=value`` overrides parsed and merged, and a validation error
turned into one line per problem naming where the bad value came from (an override, a file, the defaults).

Kept apart from the schema (:mod:`aline.config`), which it never imports: the schema's root model is
passed in where a message needs it.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from aline.runs.files import RunFileError, decode_utf8


class ConfigError(ValueError):
    """Invalid configuration; ``str(err)`` lists every problem, one per line."""


def read_yaml_file(path: str | Path) -> dict[str, Any]:
    """A config file's sections as a nested dict; any problem as one ConfigError naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"config file {path}: cannot read it ({err.strerror or err})") from None
    return yaml_tree(config_text(data, path), path)


def config_text(data: bytes, path: str | Path) -> str:
    """The UTF-8 text of a config file's bytes, or a ConfigError naming the line that is not."""
    try:
        return decode_utf8(data, path)
    except RunFileError as err:
        raise ConfigError(f"config file {err}; save it as UTF-8") from None


def yaml_tree(text: str, path: str | Path | None) -> dict[str, Any]:
    """Config YAML text as a nested dict of sections; any problem as one ConfigError naming the file."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path}: not valid YAML ({err})") from None
    except RecursionError:
        raise ConfigError(f"config file {path}: not usable YAML (nested too deeply)") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of sections")
    return raw


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["optim.lr=3e-4", "policy.k=5"]`` into a nested dict; values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(f"override {item!r}: expected key=value, e.g. optim.lr=3e-4")
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"override {item!r}: {part!r} is a value, not a section")
                break
        else:
            node[leaf] = value
    if problems:
        raise ConfigError("\n".join(problems))
    return tree


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` on top of ``base``, section by section (a nested key replaces only itself)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def override_keys(overrides: list[str]) -> dict[tuple[str, ...], str]:
    """Dotted key path → the override text that set it, so errors can name the override, not the file."""
    out = {}
    for item in overrides:
        key, sep, _ = item.partition("=")
        if sep and key:
            out[tuple(key.split("."))] = item
    return out


def key_paths(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of a nested dict, sections included: ``{"a": {"b": 1}}`` → ``[("a",), ("a", "b")]``."""
    out = []
    for key, value in tree.items():
        out.append((*prefix, str(key)))
        if isinstance(value, dict):
            out += key_paths(value, (*prefix, str(key)))
    return out


def format_validation_error(
    err: ValidationError,
    source: str,
    overrides: dict[tuple[str, ...], str] | None,
    root: type[BaseModel],
    files: dict[tuple[str, ...], str] | None = None,
) -> str:
    """One line per problem; a problem whose key (or a section above it) was set on the command line
    names that override, one set in a YAML file names the file that set it last (``files``: key path →
    file), the others name ``source`` (the YAML file(s), or the defaults). ``root`` is the validated
    model, whose field names give an unknown key's did-you-mean."""
    overrides = overrides or {}
    files = files or {}
    lines = [f"invalid config: {err.error_count()} problem(s)"]
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        key = ".".join(loc)
        origin = _origin(loc, overrides, files, source)
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key{_did_you_mean(e['loc'], root)} (from {origin})")
            continue
        got = e.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"  {key or '<top>'}: {msg}{shown} (from {origin})")
    return "\n".join(lines)


def _origin(
    loc: tuple[str, ...],
    overrides: dict[tuple[str, ...], str],
    files: dict[tuple[str, ...], str],
    source: str,
) -> str:
    # The key itself or a section above it set on the command line; for a check over a whole section
    # (loc = the section), the overrides inside it. Then the same in the files.
    for n in range(len(loc), 0, -1):
        if loc[:n] in overrides:
            return f"override {overrides[loc[:n]]!r}"
    inside = [text for key, text in overrides.items() if loc and key[: len(loc)] == loc]
    if inside:
        return "override " + ", ".join(map(repr, inside))
    for n in range(len(loc), 0, -1):
        if loc[:n] in files:
            return f"config file {files[loc[:n]]}"
    return source if source == "defaults" else f"config file {source}"


def _did_you_mean(loc: tuple[Any, ...], root: type[BaseModel]) -> str:
    model = root
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return ""
        model = ann
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return f"; did you mean {'.'.join(map(str, loc[:-1] + (close[0],)))!r}?" if close else ""
