"""What each head of the model is measured against: the monitor's chart panels with their limit lines, and
the headline values read as a share of their limit ("AUC 0.772 = 99.2 % of Bayes").

The limits come from status.json's ``oracle`` object (``contract.ORACLE_KEYS``) or are constants (the
oracle's policy value is 1 by definition). A panel whose column a run's metrics.csv lacks is left out,
so older runs and newer metrics both show what they have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from aline import contract as C
from aline.monitor.runview import RunData


@dataclass
class Ref:
    """A horizontal reference line: ``key`` in status.json's oracle (or a constant ``value``)."""

    text: str
    key: str | None = None
    value: float | None = None
    dash: str = "dash"
    color: str = "black"

    def resolve(self, run: RunData) -> float | None:
        if self.value is not None:
            return self.value
        return run.status.oracle.get(self.key) if self.key else None


@dataclass
class Panel:
    column: str
    title: str
    split: str = C.SPLIT_VAL
    refs: list[Ref] = field(default_factory=list)
    log: bool = False
    robust: bool = True  # False where the extremes are the point (the learning-rate warm-up)


FORECAST = [
    Panel(
        "auc",
        "AUC",
        refs=[Ref("Bayes", "auc"), Ref("logistic regression", "logreg_auc", dash="dot", color="#777777")],
    ),
    Panel("brier", "Brier", refs=[Ref("Bayes", "brier")]),
    Panel("ece", "ECE", refs=[Ref("Bayes", "ece")]),
    Panel("pr_auc", "PR AUC", refs=[Ref("Bayes", "pr_auc")]),
]
POSTERIOR = [
    Panel("post_mse", "posterior MSE", refs=[Ref("floor (exact posterior)", "post_mse_floor")]),
    Panel("sigma_mae", "sigma error (MAE)", refs=[Ref("exact", value=0.0, dash="dot", color="#777777")]),
]
POLICY = [
    Panel(
        "policy_value",
        "policy value (share of oracle)",
        refs=[
            Ref("oracle", value=1.0),
            Ref("best fixed hours", "best_fixed_share", dash="dot", color="#2ca02c"),
            Ref("random hours", "random_share", dash="dot", color="#d62728"),
        ],
    ),
    Panel(
        "policy_set_value",
        "policy set value (exact cut of the set, share of the greedy oracle's)",
        refs=[Ref("oracle", value=1.0)],
    ),
    Panel("auc_asked", "AUC after asking", refs=[Ref("Bayes after the oracle's answers", "auc_asked")]),
    Panel("brier_asked", "Brier after asking", refs=[Ref("Bayes after the oracle's answers", "brier_asked")]),
    Panel("ask_outside_pool", "asks outside the pool (share)", refs=[Ref("none", value=0.0, dash="dot")]),
    Panel("gain_spearman", "gain rank correlation (Spearman)", refs=[Ref("perfect", value=1.0, dash="dot")]),
]
OPTIMISATION = [
    Panel("lr", "learning rate", split=C.SPLIT_TRAIN, log=True, robust=False),
    Panel("grad_norm", "gradient norm", split=C.SPLIT_TRAIN),
]
HEADS = {"forecast": FORECAST, "posterior": POSTERIOR, "policy": POLICY, "optimisation": OPTIMISATION}
HEAD_TITLES = {
    "forecast": "Forecast (validation) vs the Bayes-optimal forecast",
    "posterior": "Posterior (validation) vs the exact posterior",
    "policy": "Policy (validation) vs the oracle, the best fixed hours and random hours",
    "optimisation": "Optimisation (train)",
}


# --- headline values against their limits ------------------------------------------------------------------

# (column, label, oracle key or constant, higher is better)
HEADLINES = (
    ("auc", "AUC", "auc", True),
    ("brier", "Brier", "brier", False),
    ("pr_auc", "PR AUC", "pr_auc", True),
    ("post_mse", "posterior MSE", "post_mse_floor", False),
    ("policy_value", "policy value", 1.0, True),
    ("auc_asked", "AUC after asking", "auc_asked", True),
)


def headline(value: float, limit: float | None, higher_is_better: bool) -> str | None:
    """The value as a share of its limit: value/limit when higher is better, limit/value otherwise,
    so 100 % means "at the limit" either way. None if there is no usable limit."""
    if limit is None or not math.isfinite(limit) or limit <= 0 or value <= 0 or not math.isfinite(value):
        return None
    share = value / limit if higher_is_better else limit / value
    return f"{100 * share:.1f} %"


def headlines(run: RunData) -> list[tuple[str, str, str | None]]:
    """(label, value text, "xx.x % of <limit>" or None) for the newest validation row of ``run``."""
    row = run.newest_row(C.SPLIT_VAL) or {}
    out = []
    for column, name, ref, hib in HEADLINES:
        if column not in row:
            continue
        value = row[column]
        limit = ref if isinstance(ref, float) else run.status.oracle.get(ref)
        limit_name = "oracle" if isinstance(ref, float) else ("floor" if column == "post_mse" else "Bayes")
        share = headline(value, limit, hib)
        out.append((name, f"{value:.4g}", f"{share} of {limit_name}" if share else None))
    return out
