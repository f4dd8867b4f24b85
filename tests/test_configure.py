"""`ehrcxr configure`: each grid stage's one dependency changes exactly when its inputs do."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml

from ehrcxr import params as params_mod
from ehrcxr.cli import main
from ehrcxr.stages import configure

REPO = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((REPO / "params.yaml").read_text())


def _train(raw: dict, model: str) -> dict:
    return configure.train_config(params_mod.apply_profile(copy.deepcopy(raw)), model)


def _evaluate(raw: dict) -> dict:
    return configure.evaluate_config(params_mod.apply_profile(copy.deepcopy(raw)))


def test_a_train_configuration_follows_only_what_the_stage_reads() -> None:
    base = _train(RAW, "aug")
    assert base["params"]["model"] == {
        k: v for k, v in RAW["models"]["aug"].items() if k != "search"
    }
    assert "models/aug.py" in base["code"] and "models/lstm.py" not in base["code"]

    changed = copy.deepcopy(RAW)
    changed["models"]["aug"]["search"]["alpha"]["high"] = 0.9  # a search space: no retraining
    changed["profiles"]["paper"]["train"]["lr"] = 0.5  # the paper profile, under the default one
    changed["models"]["lstm"] = {"unused": 1}  # another model's section
    changed["report"]["robustness_metric"] = "auprc"
    changed["wandb"]["mode"] = "disabled"  # logging does not change outputs
    assert _train(changed, "aug") == base

    for section, key, value in (
        ("train", "lr", 0.02),
        ("encoders", "dim", 8),
        ("augment", "flip", 0.0),
    ):
        other = copy.deepcopy(RAW)
        other[section][key] = value
        assert _train(other, "aug") != base, section
    other = copy.deepcopy(RAW)
    other["models"]["aug"]["alpha"] = 0.3
    assert _train(other, "aug") != base


def test_the_profile_is_applied_before_fingerprinting() -> None:
    paper = copy.deepcopy(RAW)
    paper["profile"] = "paper"
    resolved = _train(paper, "lstm")["params"]
    assert resolved["train"]["lr"] == RAW["profiles"]["paper"]["train"]["lr"]
    assert (
        resolved["encoders"]["resnet_depth"] == RAW["profiles"]["paper"]["encoders"]["resnet_depth"]
    )


def test_an_evaluation_configuration_follows_evaluate_and_fairness_only() -> None:
    base = _evaluate(RAW)
    assert set(base["params"]) == {"evaluate", "fairness"}
    changed = copy.deepcopy(RAW)
    changed["train"]["lr"] = 0.5
    assert _evaluate(changed) == base
    changed["fairness"]["min_group_size"] = 3
    assert _evaluate(changed) != base


def test_code_hashes_follow_the_files(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(configure, "package_dir", lambda: tmp_path)
    first = configure.code_hashes(["a.py"])
    (tmp_path / "a.py").write_text("x = 2\n")
    assert configure.code_hashes(["a.py"]) != first


def test_the_command_writes_one_file_per_registered_model(tmp_path: Path) -> None:
    from ehrcxr.models.registry import model_modules

    out = tmp_path / "config"
    assert main(["configure", "--out", str(out), "--params", str(REPO / "params.yaml")]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            *(f"train-{m}.json" for m in model_modules()),
            *(f"tune-{m}.json" for m in model_modules()),
            "evaluate.json",
        ]
    )
    lstm = json.loads((out / "train-lstm.json").read_text())
    assert lstm == configure.train_config(params_mod.load(REPO / "params.yaml"), "lstm")
