"""Config loading: every shipped file validates, overrides apply, and every bad value is reported at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aline.config import Config, ConfigError, load_config, parse_overrides
from aline.config_doc import defaults_yaml, describe

ROOT = Path(__file__).parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
TRAIN_YAML = ROOT / "configs" / "train.yaml"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.model.d_model % cfg.model.heads == 0


def test_train_yaml_documents_the_defaults() -> None:
    # configs/train.yaml claims its values are the built-in defaults; keep that claim true.
    assert load_config(TRAIN_YAML) == Config()


def _yaml_leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "answers":  # answers is a mapping-valued key, not a section
            out.update(_yaml_leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_train_yaml_holds_every_key_at_its_default_under_its_description() -> None:
    # One description per key, written in aline/config.py: the YAML is rendered from it and cannot drift.
    text = TRAIN_YAML.read_text(encoding="utf-8")
    assert text == defaults_yaml(), "regenerate: python -m aline.config_doc > configs/train.yaml"
    docs = describe()
    assert _yaml_leaves(yaml.safe_load(text)) == {d.key: d.default for d in docs}
    flat = " ".join(line.strip().lstrip("# ") for line in text.splitlines())
    for doc in docs:
        assert doc.description, f"{doc.key} has no description"
        assert " ".join(doc.description.split()) in flat, doc.key


def test_help_lists_every_key_with_its_default_and_description() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "aline.train", "--help"], capture_output=True, text=True, check=True
    ).stdout
    flat = " ".join(out.split())
    for doc in describe():
        assert f"{doc.key} [" in out, doc.key
        assert " ".join(doc.description.split()) in flat, doc.key
    assert "--config FILE" in out and "--resume RUN_DIR" in out and "--init-from RUN_DIR" in out


def test_presets_layer_over_a_config_and_overrides_win(tmp_path: Path) -> None:
    cohort = tmp_path / "cohort.yaml"
    cohort.write_text(yaml.safe_dump({"data": {"prefix": "cohort"}, "trainer": {"epochs": 3}}))
    preset = ROOT / "configs" / "model" / "kalman.yaml"
    cfg = load_config([cohort, preset], ["trainer.batch_size=32"])
    assert cfg.model.encoder == "kalman" and cfg.optim.lr == pytest.approx(1e-2)  # from the preset
    assert (cfg.data.prefix, cfg.trainer.epochs) == ("cohort", 3)  # from the first file
    assert cfg.trainer.batch_size == 32  # the override over the preset's 256
    # A later file wins over an earlier one key by key, and a bad value names the file that set it.
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"optim": {"lr": -1}}))
    with pytest.raises(ConfigError) as err:
        load_config([cohort, preset, bad])
    assert "optim.lr: " in str(err.value) and f"(from config file {bad})" in str(err.value)


def test_overrides_are_typed_and_nested() -> None:
    cfg = load_config(
        None, ["optim.lr=3e-4", "trainer.epochs=5", "policy.reward=query_value", "dist.backend=null"]
    )
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.trainer.epochs == 5
    assert cfg.policy.reward == "query_value"
    assert cfg.dist.backend is None
    assert parse_overrides(["a.b.c=1", "a.d=[1, 2]"]) == {"a": {"b": {"c": 1}, "d": [1, 2]}}


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"optim": {"lr": 0.5}, "policy": {"k": 4}}))
    cfg = load_config(path, ["optim.lr=0.25"])
    assert (cfg.optim.lr, cfg.policy.k) == (0.25, 4)


def _problems(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    return str(err.value)


def test_unknown_key_suggests_the_close_one() -> None:
    msg = _problems(["optim.lrr=0.1"])
    assert "optim.lrr: unknown key" in msg
    assert "did you mean 'optim.lr'" in msg


def test_unknown_section_suggests_the_close_one() -> None:
    assert "did you mean 'trainer'" in _problems(["trainr.epochs=3"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lr=-1", "optim.lr"),
        ("policy.k=25", "policy.k"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("trainer.epochs=many", "trainer.epochs"),
        ("policy.reward=entropy", "policy.reward"),
        ("model.dropout=1.5", "model.dropout"),
        ("optim.ema_momentum=1", "optim.ema_momentum"),
        ("optim.ema_momentum=0", "optim.ema_momentum"),
    ],
)
def test_bad_values_name_the_key(override: str, key: str) -> None:
    msg = _problems([override])
    assert f"  {key}:" in msg
    assert override.split("=", 1)[1] in msg  # the offending value is shown


def test_all_problems_are_reported_at_once() -> None:
    msg = _problems(["optim.lr=-1", "policy.k=25", "trainer.batch_size=0", "optim.lrr=1"])
    assert "4 problem(s)" in msg
    for key in ("optim.lr:", "policy.k:", "trainer.batch_size:", "optim.lrr:"):
        assert key in msg


def test_cross_field_checks() -> None:
    assert "divisible" in _problems(["model.encoder=transformer", "model.d_model=30", "model.heads=4"])
    assert "must be even" in _problems(["model.d_model=31"])
    # torch's GRU drops out only between layers: one layer would ignore the setting, so say so.
    assert "does nothing with layers=1" in _problems(["model.dropout=0.1"])
    assert load_config(None, ["model.dropout=0.1", "model.layers=2"]).model.dropout == 0.1
    assert load_config(None, ["model.d_model=30", "model.heads=4"]).model.d_model == 30  # gru: no heads
    assert "unknown metric 'acc'" in _problems(["checkpoint.metric=acc"])
    assert "samples >= 2" in _problems(["policy.samples=1"])
    assert load_config(None, ["policy.samples=1", "policy.baseline=batch_mean"]).policy.samples == 1
    assert load_config(None, ["optim.ema_momentum=null"]).optim.ema_momentum is None


def test_malformed_override_and_file_problems(tmp_path: Path) -> None:
    assert "expected key=value" in _problems(["optim.lr"])
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_asking_keys_default_to_the_simulator_and_must_name_features() -> None:
    cfg = Config()
    assert cfg.data.columns.answers == {"symptom_score": "ask_symptom_score"}
    assert cfg.policy.unaskable_when == ["asleep", "busy"]
    assert load_config(None, ["data.columns.answers=null"]).data.columns.answers is None
    msg = _problems(["policy.unaskable_when=[asleep, drivng]", "data.columns.answers={mood: ask_mood}"])
    assert "policy.unaskable_when: 'drivng' is not in data.columns.features" in msg
    assert "data.columns.answers: 'mood' is not in data.columns.features" in msg


def test_default_asking_keys_shrink_to_a_cohorts_own_features():
    # A cohort config that lists its own features needs no asking keys: the simulator's question and
    # unaskable flags are defaults, and only the ones among the features are kept.
    cfg = load_config(None, ["data.columns.features=[heart_rate, asleep]"])
    assert cfg.data.columns.answers is None
    assert cfg.policy.unaskable_when == ["asleep"]
    cfg = load_config(None, ["data.columns.features=[symptom_score, steps]"])
    assert cfg.data.columns.answers == {"symptom_score": "ask_symptom_score"}
    assert cfg.policy.unaskable_when == []
    # Set explicitly, they must fit exactly.
    msg = _problems(["data.columns.features=[heart_rate]", "policy.unaskable_when=[asleep]"])
    assert "policy.unaskable_when: 'asleep' is not in data.columns.features" in msg


def test_kalman_measurements_default_to_the_sensors_and_diaries_and_must_name_features() -> None:
    cfg = load_config(None, ["data.columns.features=[heart_rate, asleep, steps]", "model.encoder=kalman"])
    assert cfg.model.measurements == ["heart_rate"]  # the default shrinks to the features the data has
    msg = _problems(["model.encoder=kalman", "model.measurements=[heart_rate, hr_var]"])
    assert "model.measurements: 'hr_var' is not in data.columns.features" in msg
    msg = _problems(["model.encoder=kalman", "data.columns.features=[asleep, steps]"])
    assert "the kalman encoder needs at least one measurement feature" in msg
    # Other encoders ignore the key, so a stale value is no reason to refuse their run.
    assert load_config(None, ["model.encoder=gru", "model.measurements=[hr_var]"]).model.measurements == [
        "hr_var"
    ]


def test_cli_layers_repeated_config_files(tmp_path: Path) -> None:
    # --config may be repeated; the second file's bad value is reported against that file, before any work.
    first = tmp_path / "first.yaml"
    first.write_text(yaml.safe_dump({"run": {"dir": str(tmp_path / "runs")}}))
    second = tmp_path / "second.yaml"
    second.write_text(yaml.safe_dump({"policy": {"k": 99}}))
    proc = subprocess.run(
        [sys.executable, "-m", "aline.train", "--config", str(first), "--config", str(second)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "policy.k: " in proc.stderr and f"(from config file {second})" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()
