"""The hyperparameter search (ehrcxr tune, ehrcxr hyperparameters): search spaces as data, what
scikit-optimize receives, validation-only scoring, resuming, W&B trial runs, the best
configuration reaching training. The search through DVC is in test_pipeline.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from ehrcxr import params as params_mod
from ehrcxr.cli import main
from ehrcxr.errors import EhrcxrError
from ehrcxr.tuning import dimensions
from wandb_offline import offline_runs

REPO = Path(__file__).resolve().parents[1]
CELL = "shaspec-mortality-base"


def _params(tmp: Path, **tune: object) -> Path:
    """The project's params, trained briefly, searching shaspec on mortality (base cohort)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update({"max_epochs": 2, "min_epochs": 1, "patience": 1})
    params["tune"].update(
        {
            "models": ["shaspec"],
            "tasks": ["mortality"],
            "cohorts": ["base"],
            "n_calls": 3,
            "n_initial_points": 2,
            "seeds": [42, 7],
            **tune,
        }
    )
    params["wandb"]["dir"] = str(tmp)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _tune_args(data: dict[str, Path], out: Path, params: Path, model: str = "shaspec") -> list[str]:
    """``ehrcxr tune`` of ``model`` on mortality (base cohort), writing under ``out``; its
    configuration file (`ehrcxr configure`) is written first, as the DVC stage's dependency."""
    config = out / "config"
    assert main(["configure", "--out", str(config), "--params", str(params)]) == 0
    return [
        "tune", "--model", model, "--task", "mortality", "--cohort", "base",
        "--extract", str(data["extract"]), "--features", str(data["features"]),
        "--images", str(data["images"]), "--out", str(out / "search"),
        "--trials", str(out / "trials.csv"), "--summary", str(out / "summary.json"),
        "--plot", str(out / "convergence.png"), "--checkpoints", str(out / "checkpoints"),
        "--config", str(config / f"tune-{model}.json"), "--params", str(params),
    ]  # fmt: skip


def _search_values(out: Path) -> pd.DataFrame:
    """The trials table without its timings (the searched values and the validation metric)."""
    return pd.read_csv(out / "trials.csv").drop(columns="seconds")


def test_search_spaces_are_the_papers_ranges_as_data() -> None:
    from skopt.space import Categorical, Integer, Real

    params = params_mod.load(REPO / "params.yaml")
    searched = {m for m in params["models"] if params_mod.search_space(params, m)}
    # CareBench §4.3: these eight are tuned, the other nine run their paper defaults.
    assert searched == {
        "aug",
        "inforeg",
        "healnet",
        "flex_moe",
        "drfuse",
        "shaspec",
        "m3care",
        "smil",
    }
    dims = {
        m: {d.name: d for d in dimensions(
            params_mod.search_space(params, m), params_mod.model_params(params, m), m
        )}
        for m in searched
    }  # fmt: skip
    smil = dims["smil"]["inner_lr"]
    assert isinstance(smil, Real) and smil.prior == "log-uniform"
    assert (smil.low, smil.high) == (1e-4, 1e-3)
    assert isinstance(dims["healnet"]["depth"], Categorical)
    assert list(dims["healnet"]["depth"].categories) == [1, 2, 3]
    assert len(dims["drfuse"]) == 7 and all(
        isinstance(d, Real) and (d.low, d.high) == (0.01, 2.0) for d in dims["drfuse"].values()
    )
    integer = dimensions({"n_experts": {"low": 2, "high": 6}}, {"n_experts": 4}, "x")[0]
    assert isinstance(integer, Integer)
    with pytest.raises(EhrcxrError, match="no setting 'nope'"):
        dimensions({"nope": {"low": 0.1, "high": 1.0}}, {"alpha": 0.1}, "shaspec")
    with pytest.raises(EhrcxrError, match="prior"):
        dimensions({"alpha": {"low": 0.1, "high": 1.0, "prior": "normal"}}, {"alpha": 0.1}, "m")
    with pytest.raises(EhrcxrError, match="low < high"):
        dimensions({"alpha": {"low": 1.0, "high": 0.1}}, {"alpha": 0.1}, "m")


def test_a_profile_cannot_change_which_stages_exist(tmp_path: Path) -> None:
    """dvc.yaml's matrices read params.yaml before any profile: a profile that changed a list
    would leave the code expecting stages DVC never made (it used to: the paper robustness
    ratios)."""
    for override in ({"tune": {"models": ["aug"]}}, {"robustness": {"ratios": [0.3]}},
                     {"grid": {"tasks": ["los"]}}):  # fmt: skip
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["profiles"]["paper"] |= override
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(params))
        with pytest.raises(EhrcxrError, match="reads it before any profile"):
            params_mod.load(path)
    paper = params_mod.apply_profile(
        yaml.safe_load((REPO / "params.yaml").read_text()) | {"profile": "paper"}
    )
    tune = params_mod.tune_config(paper)
    assert (tune.n_calls, tune.n_initial_points, tune.acq_func, tune.seeds) == (
        20, 5, "gp_hedge", (42, 123, 1234)
    )  # fmt: skip


def _plant_test_signal(data: dict[str, Path], root: Path) -> dict[str, Path]:
    """A copy of the data whose test split says the opposite of the truth: every label of the
    test stays flipped (LoS: reversed) and their EHR set to a constant. A search that trained on
    or scored any test stay would see different numbers."""
    planted = {k: root / k for k in ("extract", "features", "images")}
    for k, path in planted.items():
        shutil.copytree(data[k], path)
    cohort = pd.read_parquet(planted["extract"] / "cohort.parquet")
    test = (cohort["split"] == "test").to_numpy()
    from ehrcxr.tasks import get_task

    labels = [c for t in ("mortality", "phenotype") for c in get_task(t).labels]
    cohort.loc[test, labels] = 1 - cohort.loc[test, labels]
    cohort.loc[test, "los_class"] = 6 - cohort.loc[test, "los_class"]
    cohort.to_parquet(planted["extract"] / "cohort.parquet", index=False)
    ehr = np.load(planted["features"] / "ehr.npy")
    ehr[test] = 3.0
    np.save(planted["features"] / "ehr.npy", ehr)
    return planted


def test_the_search_never_reads_the_test_split(
    small_data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    params = _params(tmp_path)
    planted = _plant_test_signal(small_data, tmp_path / "planted")
    cohort = pd.read_parquet(small_data["extract"] / "cohort.parquet")
    assert (cohort["split"] == "test").sum() > 0
    tables = []
    for name, data in (("true", small_data), ("planted", planted)):
        assert main(_tune_args(data, tmp_path / name, params)) == 0
        tables.append(_search_values(tmp_path / name))
    # The planted test split changed nothing: every call, its values and its scores are equal.
    pd.testing.assert_frame_equal(tables[0], tables[1])
    assert len(tables[0]) == 3 and tables[0]["value"].between(0, 1).all()

    # The control: a search that scored its calls on the test split (its test predictions
    # passed off as validation ones) does see the planted signal, so the check above can fail.
    from ehrcxr import training

    honest = training.train_one

    def leaky(*args: object, predict_splits: tuple[str, ...] = ("val", "test")) -> tuple:
        predictions, curves = honest(*args, predict_splits=("test",))
        return predictions.assign(split="val"), curves

    monkeypatch.setattr(training, "train_one", leaky)
    one_call = _params(tmp_path, n_calls=1, n_initial_points=1)
    leaked = []
    for name, data in (("leaky-true", small_data), ("leaky-planted", planted)):
        assert main(_tune_args(data, tmp_path / name, one_call)) == 0
        leaked.append(_search_values(tmp_path / name))
    assert leaked[0]["value"][0] != leaked[1]["value"][0]


def _wait_for_calls(sidecar_root: Path, calls: int, process: subprocess.Popen) -> None:
    """Until ``calls`` calls are recorded with their W&B runs written."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, "the search ended before it could be interrupted"
        for sidecar in sidecar_root.glob("*/trials.json"):
            try:
                if sum(c["logged"] for c in json.loads(sidecar.read_text())) >= calls:
                    return
            except json.JSONDecodeError:  # pragma: no cover - written atomically
                pass
        time.sleep(0.2)
    raise AssertionError(f"no {calls} completed calls within 300 s")


@pytest.mark.slow
def test_an_interrupted_search_resumes_and_equals_an_uninterrupted_one(
    small_data: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Same params, same trials; killed after two calls, the rerun replays those two from the
    checkpoint (no training, no second W&B run) and trains the others: the same search."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    for out in (whole, resumed):
        out.mkdir()
    n_calls = 4
    assert main(_tune_args(small_data, whole, _params(whole, n_calls=n_calls))) == 0
    capsys.readouterr()
    params = _params(resumed, n_calls=n_calls)
    env = {**os.environ, "EHRCXR_WARM": "0", "WANDB_MODE": "offline"}
    process = subprocess.Popen(
        [sys.executable, "-m", "ehrcxr.cli", *_tune_args(small_data, resumed, params)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_calls(resumed / "checkpoints", 2, process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not (resumed / "trials.csv").exists()  # killed before its outputs
    killed_trials = {r.config["call"] for _, r in offline_runs(resumed) if r.job_type == "trial"}
    assert {1, 2} <= killed_trials
    assert main(_tune_args(small_data, resumed, params)) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    done = next(x for x in lines if x.get("tune") == CELL)
    assert done["replayed"] >= 2  # the checkpointed calls (a third may have finished)
    assert [x["call"] for x in lines if x.get("tune") == "call"] == list(
        range(done["replayed"] + 1, n_calls + 1)
    )
    pd.testing.assert_frame_equal(_search_values(whole), _search_values(resumed))
    assert not list((resumed / "checkpoints").iterdir())  # removed once complete
    # Each call was logged once, by the process that trained it (replayed calls are not rerun).
    runs = [r for _, r in offline_runs(resumed) if r.job_type == "trial"]
    assert sorted(r.config["call"] for r in runs) == list(range(1, n_calls + 1))

    # What W&B holds for the uninterrupted search: one run per call, one summary run.
    table = pd.read_csv(whole / "trials.csv")
    held = offline_runs(whole)
    trials = sorted((r for _, r in held if r.job_type == "trial"), key=lambda r: r.config["call"])
    assert [r.group for r in trials] == [f"tune@{CELL}"] * n_calls
    for run, row in zip(trials, table.itertuples(), strict=True):
        assert run.config["hyperparameters"] == {"alpha": row.alpha, "beta": row.beta}
        (logged,) = [h for h in run.history if "val_selection" in h]
        assert logged["val_selection"] == pytest.approx(row.value)
        assert logged["val_selection/seed7"] == pytest.approx(row.value_seed7)
    ((summary_dir, summary),) = [(d, r) for d, r in held if r.job_type == "search"]
    assert summary.group == f"tune@{CELL}" and summary.config["search"]["alpha"] == {
        "low": 0.01, "high": 0.1
    }  # fmt: skip
    (table_file,) = summary_dir.glob("files/media/table/trials_*.table.json")
    logged_table = json.loads(table_file.read_text())
    assert len(logged_table["data"]) == n_calls and "value" in logged_table["columns"]
    keys = {k for _, r in held for h in r.history for k in h} | {
        k for _, r in held for k in r.config
    }
    assert not any("stay" in k or "subject" in k for k in keys)  # aggregates only


def test_what_gp_minimize_received_and_the_best_reaching_training(
    small_data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The optimiser (skopt's own result, not the log) got gp_hedge, the initial points and the
    random state of params; its best call becomes the cell's hyperparameters file, and
    ``ehrcxr train --hyperparameters`` builds the model from that file."""
    from skopt import load

    monkeypatch.setenv("WANDB_MODE", "disabled")
    params = yaml.safe_load(_params(tmp_path, seeds=[42]).read_text())
    params["tune"] |= {"models": ["flex_moe"], "n_calls": 3, "n_initial_points": 2}
    params["models"]["flex_moe"]["search"] = {
        "n_experts": {"choices": [4, 16]},
        "gate_loss_weight": {"low": 0.001, "high": 0.1},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    args = _tune_args(small_data, tmp_path, path, model="flex_moe")
    cell = "flex_moe-mortality-base"
    args[args.index("--out") + 1] = str(tmp_path / "tuning" / cell)
    assert main(args) == 0
    result = load(tmp_path / "tuning" / cell / "result.pkl")
    received = result.specs["args"]
    assert received["acq_func"] == "gp_hedge" and received["n_initial_points"] == 2
    assert received["n_calls"] == 3 and len(result.x_iters) == 3
    # Gaussian processes are fitted once the initial points are told: calls 2 and 3 here.
    assert len(result.models) == 3 - 2 + 1
    best = json.loads((tmp_path / "tuning" / cell / "best.json").read_text())
    table = pd.read_csv(tmp_path / "trials.csv")
    assert best["value"] == pytest.approx(table["value"].max())
    assert best["hyperparameters"]["n_experts"] == table.loc[table["value"].idxmax(), "n_experts"]
    assert -min(result.func_vals) == pytest.approx(best["value"])

    hyper = tmp_path / "hyperparameters"
    assert main(["hyperparameters", "--tuning", str(tmp_path / "tuning"), "--out", str(hyper),
                 "--params", str(path)]) == 0  # fmt: skip
    tuned = json.loads((hyper / f"{cell}.json").read_text())
    assert tuned["source"] == f"tune@{cell}"
    assert tuned["params"] == params_mod.model_params(params, "flex_moe") | best["hyperparameters"]
    untuned = json.loads((hyper / "flex_moe-mortality-matched.json").read_text())
    assert untuned["source"] == "defaults" and untuned["params"]["n_experts"] == 8
    assert len(list(hyper.glob("*.json"))) == len(params["grid"]["models"]) * 3 * 2

    # The file, not params, sets the model: force the other expert count and train with it.
    other = 16 if best["hyperparameters"]["n_experts"] == 4 else 4
    tuned["params"]["n_experts"] = other
    (hyper / f"{cell}.json").write_text(json.dumps(tuned))
    train = [
        "train", "--model", "flex_moe", "--task", "mortality", "--cohort", "base",
        "--extract", str(small_data["extract"]), "--features", str(small_data["features"]),
        "--images", str(small_data["images"]), "--out", str(tmp_path / "ckpt"),
        "--predictions", str(tmp_path / "pred.parquet"), "--params", str(path),
        "--hyperparameters", str(hyper / f"{cell}.json"),
    ]  # fmt: skip
    assert main(train) == 0
    state = torch.load(tmp_path / "ckpt" / "seed42.ckpt", weights_only=False)["state_dict"]
    gates = [v for k, v in state.items() if k.endswith("w_gate.weight")]
    assert gates and all(g.shape[0] == other for g in gates)
    # Another model's file is refused; a searched cell without its search's result too.
    assert main([*train[:-1], str(hyper / "shaspec-mortality-base.json")]) == 2
    shutil.rmtree(tmp_path / "tuning" / cell)
    assert main(["hyperparameters", "--tuning", str(tmp_path / "tuning"), "--out", str(hyper),
                 "--params", str(path)]) == 2  # fmt: skip
