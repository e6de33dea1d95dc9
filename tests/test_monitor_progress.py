"""Console progress (aline.training.progress) on a real ignite Engine: plain lines off a terminal."""

from __future__ import annotations

import io
import re

import pytest
from ignite.engine import Engine

from aline.training.progress import attach_progress


def run_engine(stream: io.StringIO, epochs: int, length: int, every_pct: float = 10.0) -> list[str]:
    trainer = Engine(lambda engine, batch: {"loss": 1.0 / engine.state.iteration})
    attach_progress(trainer, ["loss"], stream=stream, every_pct=every_pct)
    trainer.run(range(length), max_epochs=epochs)
    return stream.getvalue().splitlines()


def test_redirected_output_writes_a_line_every_tenth_of_an_epoch() -> None:
    stream = io.StringIO()  # isatty() is False, as for `> train.log`
    lines = run_engine(stream, epochs=2, length=150)
    assert "\r" not in stream.getvalue()
    assert len(lines) == 20  # 10 % steps of 150 iterations, two epochs (the redrawn bar wrote ~150 each)
    first = re.match(r"epoch 1/2\s+(\d+)% \((\d+)/150\)\s+loss (\S+)", lines[0])
    assert first and first.groups()[:2] == ("10", "15")
    assert float(first.group(3)) == pytest.approx(1 / 15, rel=1e-3)  # the output of iteration 15
    assert re.match(r"epoch 2/2\s+100% \(150/150\)", lines[-1])
    done = [int(re.search(r"\((\d+)/150\)", line).group(1)) for line in lines]
    assert done == [15 * k for k in range(1, 11)] * 2


def test_short_epoch_writes_each_mark_once() -> None:
    # 3 iterations per epoch cannot hit every 10 % mark: one line per iteration, never more.
    lines = run_engine(io.StringIO(), epochs=1, length=3)
    assert [re.search(r"\((\d)/3\)", line).group(1) for line in lines] == ["1", "2", "3"]


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_the_progress_bar() -> None:
    from ignite.handlers import ProgressBar

    trainer = Engine(lambda engine, batch: {"loss": 0.5})
    attach_progress(trainer, ["loss"], stream=FakeTTY())
    # The bar registers its own handlers; the plain writer would register PlainProgress methods.
    handlers = [h for hs in trainer._event_handlers.values() for h, *_ in hs]
    owners = {type(getattr(h, "__self__", None)).__name__ for h in handlers}
    assert "PlainProgress" not in owners
    assert any(
        isinstance(getattr(h, "__self__", None), ProgressBar) or "ProgressBar" in repr(h) for h in handlers
    )


def test_bad_share_is_refused() -> None:
    with pytest.raises(ValueError, match="every_pct"):
        attach_progress(Engine(lambda e, b: None), [], stream=io.StringIO(), every_pct=0)
