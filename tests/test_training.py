"""Training through the real entry point: predictions, evaluation, W&B offline, DDP, the CI gate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ehrcxr.cli import main
from ehrcxr.models import list_models
from ehrcxr.tasks import TASKS
from wandb_offline import read_run

REPO = Path(__file__).resolve().parents[1]


def _params(tmp: Path, **train: object) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update({"max_epochs": 2, "min_epochs": 1, "patience": 1, **train})
    params["wandb"]["dir"] = str(tmp)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _train_args(
    data: dict[str, Path], tmp: Path, model: str, task: str, cohort: str, params: Path
) -> list[str]:
    return [
        "train", "--model", model, "--task", task, "--cohort", cohort,
        "--extract", str(data["extract"]), "--features", str(data["features"]),
        "--images", str(data["images"]), "--out", str(tmp / "ckpt"),
        "--predictions", str(tmp / "pred.parquet"), "--curves", str(tmp / "curves.csv"),
        "--params", str(params),
    ]  # fmt: skip


@pytest.mark.parametrize("model", list_models())
@pytest.mark.parametrize("task", TASKS)
def test_fast_dev_run_through_the_entry_point(
    model: str,
    task: str,
    small_data: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    params = _params(tmp_path)
    assert (
        main([*_train_args(small_data, tmp_path, model, task, "matched", params), "--fast-dev-run"])
        == 0
    )
    pred = pd.read_parquet(tmp_path / "pred.parquet")
    probs = pred.filter(like="prob_")
    assert len(pred) > 0 and set(pred["split"]) == {"val", "test"}
    assert (
        np.isfinite(probs.to_numpy()).all()
        and probs.to_numpy().min() >= 0
        and probs.to_numpy().max() <= 1
    )


def test_predictions_file_and_metrics(
    small_data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    params = _params(tmp_path, seeds=[42, 7])
    assert main(_train_args(small_data, tmp_path, "lstm", "phenotype", "base", params)) == 0
    pred = pd.read_parquet(tmp_path / "pred.parquet")
    cohort = pd.read_parquet(small_data["extract"] / "cohort.parquet")
    expected = cohort[cohort["split"].isin(["val", "test"])]["stay_id"]
    for seed in (42, 7):
        assert sorted(pred.loc[pred["seed"] == seed, "stay_id"]) == sorted(expected)
    assert {"prob_chf", "label_chf", "prob_sepsis", "label_sepsis"} <= set(pred.columns)
    merged = pred.merge(cohort[["stay_id", "chf"]], on="stay_id")
    assert (merged["label_chf"] == merged["chf"]).all()  # labels reach the right stays
    curves = pd.read_csv(tmp_path / "curves.csv")
    assert set(curves["seed"]) == {42, 7} and curves["val_selection"].notna().all()
    assert (tmp_path / "ckpt" / "seed42.ckpt").is_file() and (
        tmp_path / "ckpt" / "seed7.ckpt"
    ).is_file()
    assert main(["evaluate", "--predictions", str(tmp_path / "pred.parquet"), "--task", "phenotype",
                 "--out", str(tmp_path / "m.json")]) == 0  # fmt: skip
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n_seeds"] == 2 and metrics["n_stays"] == (cohort["split"] == "test").sum()
    assert 0 < metrics["auroc"] < 1 and "auroc_std" in metrics
    labels_out = ["--per-label-out", str(tmp_path / "l.json")]
    pred = ["--predictions", str(tmp_path / "pred.parquet"), "--task", "phenotype"]
    assert main(["evaluate", *pred, "--out", str(tmp_path / "m.json"), *labels_out]) == 0
    per_label = json.loads((tmp_path / "l.json").read_text())
    from ehrcxr.data.phenotypes import phenotype_columns

    assert list(per_label) == sorted(phenotype_columns())
    assert np.mean(
        [v["auprc"] for v in per_label.values() if v["auprc"] is not None]
    ) == pytest.approx(metrics["auprc"], abs=1e-3)


def test_same_seed_same_predictions(
    small_data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    runs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        params = _params(tmp_path / name)
        assert (
            main(_train_args(small_data, tmp_path / name, "medfuse", "los", "matched", params)) == 0
        )
        runs.append(pd.read_parquet(tmp_path / name / "pred.parquet"))
    pd.testing.assert_frame_equal(runs[0], runs[1])


def test_wandb_offline_run_holds_the_metric_history(
    small_data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    params = _params(tmp_path, max_epochs=3, patience=3)
    assert main(_train_args(small_data, tmp_path, "lstm", "mortality", "matched", params)) == 0
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    history = read_run(runs[0]).history
    curves = pd.read_csv(tmp_path / "curves.csv")
    logged = [r["val/selection"] for r in history if "val/selection" in r]
    assert len(logged) == 3
    assert np.allclose(logged, curves["val_selection"])
    assert sum("train/loss" in r for r in history) == 3
    # Aggregates only: nothing patient-level in what W&B stores.
    keys = {k for r in history for k in r}
    assert not any("stay" in k or "subject" in k for k in keys)


def test_two_process_ddp_on_cpu_gives_the_same_file_format(
    small_data: dict[str, Path], tmp_path: Path
) -> None:
    """Two CPU processes (gloo): the same predictions file; the validation selection metric is
    computed on the gathered, de-duplicated validation set — it equals the metric of the
    predictions rank 0 writes for the val split (one epoch: the best checkpoint is that epoch).
    Run as a command, so through the warm interpreter: Lightning re-executes the caller's
    ``__main__`` for rank 1, which must be the command's, not the server's."""
    from ehrcxr.evaluation.metrics import selection_value
    from ehrcxr.tasks import get_task

    single, ddp = tmp_path / "single", tmp_path / "ddp"
    outs = {}
    for folder, devices, strategy in ((single, 1, "auto"), (ddp, 2, "ddp")):
        folder.mkdir()
        params = _params(
            folder, devices=devices, strategy=strategy, threads=1, max_epochs=1, min_epochs=1
        )
        env = {**os.environ, "WANDB_MODE": "disabled"}
        cmd = [
            sys.executable,
            "-m",
            "ehrcxr.cli",
            *_train_args(small_data, folder, "late_fusion", "mortality", "base", params),
        ]
        done = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        assert done.returncode == 0, done.stderr[-2000:]
        outs[devices] = pd.read_parquet(folder / "pred.parquet")
        val = outs[devices][outs[devices]["split"] == "val"]
        task = get_task("mortality")
        expected = selection_value(
            task.kind, val[task.label_columns].to_numpy()[:, 0], val[task.prob_columns].to_numpy()
        )
        logged = pd.read_csv(folder / "curves.csv")["val_selection"].iloc[0]
        assert logged == pytest.approx(expected, abs=1e-5), (devices, logged, expected)
    assert list(outs[1].columns) == list(outs[2].columns)
    assert sorted(outs[1]["stay_id"]) == sorted(outs[2]["stay_id"])  # no sampler padding


def _git(repo: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)


def test_gate_fails_on_a_planted_regression_and_passes_within_tolerance(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "metrics" / "benchmark").mkdir(parents=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())

    def write_params(runs: list[str]) -> None:
        params["gate"] = {"runs": runs, "tolerance": 0.02}
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    write_params(["m-t-c"])
    committed = {"auroc": 0.80, "auprc": 0.40, "n_stays": 100}
    metrics_file = repo / "metrics" / "benchmark" / "m-t-c.json"
    metrics_file.write_text(json.dumps(committed))
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "metrics")

    def gate() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "ehrcxr.cli", "gate"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=False,
        )

    metrics_file.write_text(json.dumps({**committed, "auroc": 0.79}))  # within tolerance
    assert gate().returncode == 0
    metrics_file.write_text(json.dumps({**committed, "auroc": 0.70}))  # planted regression
    failed = gate()
    assert failed.returncode == 1 and "auroc: 0.8000 → 0.7000" in failed.stderr
    metrics_file.write_text(json.dumps({"n_stays": 100}))  # metrics vanished
    assert gate().returncode == 1
    metrics_file.write_text(json.dumps(committed))
    write_params([])
    assert gate().returncode == 2  # an empty comparison never passes


def test_bench_train_reports_throughput_input_share_and_memory(
    small_data: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    paths = ["--extract", str(small_data["extract"]), "--features", str(small_data["features"])]
    paths += ["--images", str(small_data["images"]), "--params", str(REPO / "params.yaml")]
    argv = ["bench-train", "--models", "lstm", "late_fusion", "--batches", "4", "--warmup", "1"]
    assert main([*argv, "--cohort", "base", "--out", str(out), *paths]) == 0
    results = json.loads(out.read_text())
    assert [r["model"] for r in results] == ["lstm", "late_fusion"]
    for r in results:
        assert r["batches"] == 4 and r["device"] == "cpu" and r["precision"] == "32-true"
        assert r["train_samples_per_s"] > 0 and r["predict_samples_per_s"] > 0
        assert 0 < r["input_share"] < 1 and r["step_ms"] > 0
        assert r["peak_memory_mb"] > 100  # the process's peak RSS: torch alone is more
    # The fusion model does more work per sample than the LSTM.
    assert results[1]["step_ms"] > results[0]["step_ms"]
