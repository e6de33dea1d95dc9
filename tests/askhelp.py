"""Test fixtures for the closed loop: an answer column for simulator CSVs that lack one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

ASKED = "stress_rating"
ANSWER = "ask_stress_rating"
# The simulator's diary row (C[3] = [1.8, 0, 0, 0], d = 4.2, R = 0.5): answers drawn like a logged rating.
DIARY_LOAD, DIARY_OFFSET, DIARY_SD = 1.8, 4.2, 0.5**0.5


def add_answers(data_dir: Path, prefix: str = "synthetic_migraine", seed: int = 0) -> None:
    """Give every split an ``ask_stress_rating`` column: the logged rating where there is one, a fresh
    draw from the diary's measurement model while awake, empty while asleep."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val", "test"):
        path = Path(data_dir) / f"{prefix}_{split}.csv"
        df = pd.read_csv(path)
        draw = DIARY_LOAD * df["z_stress"] + DIARY_OFFSET + rng.normal(0.0, DIARY_SD, len(df))
        answer = np.where(df[ASKED].notna(), df[ASKED], np.where(df["asleep"] > 0, np.nan, draw.round(2)))
        df[ANSWER] = answer
        df.to_csv(path, index=False)


def loop_overrides() -> list[str]:
    return [f"data.columns.answers={{{ASKED}: {ANSWER}}}"]
