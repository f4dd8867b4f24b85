"""The DVC pipeline, run for real in a scratch copy of the repository."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


# Drawn per run: a literal would sit in this (git-tracked) file, where the scan would find it.
DB_SECRET = f"pw-{secrets.token_hex(6)}"


def _run(cmd: list[str], cwd: Path, env: dict[str, str], log: list[str] | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    if log is not None:
        log += [done.stdout, done.stderr]
    return done.stdout


def _leaks(repo: Path, texts: dict[str, bytes]) -> list[str]:
    """Which of ``texts`` (name → content) hold a patient-level identifier of the extraction (a
    stay, subject, admission or DICOM id, as a whole token) or the database password."""
    cohort = pd.read_parquet(repo / "data" / "extract" / "cohort.parquet")
    ids = {str(int(v)) for c in ("stay_id", "subject_id", "hadm_id") for v in cohort[c]}
    ids |= {str(v) for v in cohort["dicom_id"].dropna()}
    token = re.compile(rb"[0-9A-Za-z][0-9A-Za-z-]*[0-9A-Za-z]|[0-9A-Za-z]")
    found = []
    for name, content in texts.items():
        if DB_SECRET.encode() in content:
            found.append(f"{name}: the database password")
        hits = {t.decode() for t in token.findall(content)} & ids
        if hits:
            found.append(f"{name}: {len(hits)} patient id(s)")
    return found


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture()
def scratch_repo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A git repository holding the project's tracked files, with a small synthesize section."""
    if not (REPO / ".git").exists():
        pytest.fail("the pipeline test needs the project's git checkout")
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    repo = tmp_path / "repo"
    for name in files:
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("WANDB_MODE", None)  # params.yaml says offline
    # A database URL with a password in the environment, as a real user's: it must end nowhere.
    env["MIMIC_DB_URL"] = f"postgresql://mimic:{DB_SECRET}@127.0.0.1:5/mimiciv"
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["synthesize"]["n_patients"] = 120
    # Two grid cells (a unimodal and a multimodal model, for the permutation test) and a
    # two-point robustness sweep keep this test fast; the matrix mechanics are the same for more.
    params["grid"] = {
        "models": ["lstm", "late_fusion"],
        "tasks": ["mortality"],
        "cohorts": ["base"],
    }
    params["robustness"].update(
        {"models": ["late_fusion"], "tasks": ["mortality"], "cohort": "base", "ratios": [0.5]}
    )
    params["statistics"]["n_permutations"] = 200
    # One search on a tiny space (3 calls, the first 2 random); the experiment stage trains the
    # searched cell, so its model is built from the search's best configuration.
    params["tune"].update(
        {
            "models": ["flex_moe"],
            "tasks": ["mortality"],
            "cohorts": ["base"],
            "n_calls": 3,
            "n_initial_points": 2,
            "seeds": [42],
        }
    )
    params["models"]["flex_moe"]["search"] = {
        "n_experts": {"choices": [4, 16]},
        "gate_loss_weight": {"low": 0.001, "high": 0.1},
    }
    params["model"], params["task"], params["cohort"] = "flex_moe", "mortality", "base"
    params["train"]["max_epochs"] = 1
    params["wandb"]["mode"] = "offline"  # the data-protection scan reads what W&B holds
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for lock in [repo / "dvc.lock", *(repo / "pipeline").glob("*/dvc.lock")]:
        lock.unlink(missing_ok=True)
    _run(["git", "init", "-q"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "scratch"], repo, env)
    _run(
        ["dvc", "remote", "modify", "--local", "local", "url", str(tmp_path / "remote")], repo, env
    )
    return repo, env


def test_dvc_repro_push_and_pull_the_synthetic_source(
    scratch_repo: tuple[Path, dict[str, str]],
) -> None:
    repo, env = scratch_repo
    log: list[str] = []
    _run(["dvc", "repro"], repo, env, log)
    # Data protection: nothing patient-level in W&B's files, the logs, the DVC locks, params.yaml
    # or anything git would track; no per-stay file, film or array is tracked by git.
    _run(["git", "add", "-A"], repo, env)
    tracked = _run(["git", "ls-files"], repo, env).split()
    assert not [t for t in tracked if t.endswith((".parquet", ".npy", ".jpg", ".ckpt", ".sqlite"))]
    wandb_files = [p for p in (repo / "wandb").rglob("*") if p.is_file()]
    assert [p for p in wandb_files if p.suffix == ".wandb"], "no offline W&B run was written"
    texts = {"dvc repro output": "".join(log).encode()}
    texts |= {str(p.relative_to(repo)): p.read_bytes() for p in wandb_files}
    texts |= {t: (repo / t).read_bytes() for t in tracked}
    assert "params.yaml" in texts and "dvc.lock" in texts
    assert _leaks(repo, texts) == []
    # The scan can fail: a cohort table or the URL among them is found.
    cohort_csv = pd.read_parquet(repo / "data/extract/cohort.parquet").to_csv().encode()
    control = _leaks(repo, {"cohort": cohort_csv, "url": env["MIMIC_DB_URL"].encode()})
    assert control[0].startswith("cohort: ") and control[1] == "url: the database password"
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["synthesize"]["params"]["params.yaml"]["synthesize"]["n_patients"] == 120
    # The grid's stages keep their own locks (pipeline/<kind>/dvc.lock), each stage with one
    # configuration file among its dependencies instead of its code files and params sections.
    grid = {}
    for kind in ("train", "evaluate", "robustness"):
        grid |= yaml.safe_load((repo / "pipeline" / kind / "dvc.lock").read_text())["stages"]
    deps = [d["path"] for d in grid["train@lstm-mortality-base"]["deps"]]
    assert (
        "data/config/train-lstm.json" in deps and "params" not in grid["train@lstm-mortality-base"]
    )
    lock["stages"] |= grid
    source = repo / "data" / "synthetic"
    assert (source / "mimiciv" / "mimiciv_icu.sqlite").is_file()
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], repo, env)
    for stage in (
        "extract",
        "featurize",
        "cache_images",
        "train@lstm-mortality-base",
        "evaluate@lstm-mortality-base",
        "evaluate@late_fusion-mortality-base",
        "robustness@late_fusion-mortality-0.5",
        "configure",
        "hyperparameters",
        "statistics",
        "report",
        "experiment",
    ):
        assert stage in lock["stages"]
    # The search ran as its own stage and its best configuration built the experiment's model.
    tune_lock = yaml.safe_load((repo / "pipeline" / "tune" / "dvc.lock").read_text())["stages"]
    assert list(tune_lock) == ["tune@flex_moe-mortality-base"]
    trials = pd.read_csv(repo / "metrics" / "tuning" / "flex_moe-mortality-base.csv")
    assert list(trials["call"]) == [1, 2, 3] and trials["best"].is_monotonic_increasing
    best = json.loads((repo / "data/tuning/flex_moe-mortality-base/best.json").read_text())
    assert best["value"] == pytest.approx(trials["value"].max())
    cell = json.loads((repo / "data/hyperparameters/flex_moe-mortality-base.json").read_text())
    assert cell["source"] == "tune@flex_moe-mortality-base"
    assert cell["params"]["n_experts"] == best["hyperparameters"]["n_experts"] != 8
    state = torch.load(repo / "models/experiment/seed42.ckpt", weights_only=False)["state_dict"]
    gates = [v for k, v in state.items() if k.endswith("w_gate.weight")]
    assert gates and all(g.shape[0] == cell["params"]["n_experts"] for g in gates)
    assert (repo / "metrics" / "tuning" / "flex_moe-mortality-base.png").is_file()
    deps = [d["path"] for d in grid["train@lstm-mortality-base"]["deps"]]
    assert "data/hyperparameters/lstm-mortality-base.json" in deps
    stats = json.loads((repo / "metrics" / "statistics.json").read_text())
    test = stats["mortality"]["base"]["metrics"]["auroc"]
    assert test["best_unimodal"] == "lstm" and 0 < test["models"]["late_fusion"]["p_value"] <= 1
    report = (repo / "metrics" / "report" / "report.md").read_text()
    assert "Table 1. In-hospital mortality" in report and "late_fusion" in report
    assert (repo / "metrics" / "report" / "robustness-mortality.png").is_file()
    fairness = json.loads((repo / "metrics/fairness/lstm-mortality-base.json").read_text())
    assert set(fairness) == {"race_group", "gender", "age_group"}
    assert (repo / "data" / "features" / "ehr.npy").is_file()
    assert (repo / "data" / "images" / "images.npy").is_file()
    shown = json.dumps(json.loads(_run(["dvc", "metrics", "show", "--json"], repo, env)))
    assert "base_cohort" in shown and "lstm-mortality-base.json" in shown and "auroc" in shown
    before = _tree_digest(source)

    _run(["dvc", "push"], repo, env)
    shutil.rmtree(source)
    _run(["dvc", "pull"], repo, env)
    assert _tree_digest(source) == before

    # Editing what no grid stage reads (the paper profile, under the default one) reruns the
    # configuration, which then leaves every grid stage's dependency file as it was.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["profiles"]["paper"]["train"]["lr"] = 0.5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rerun = _run(["dvc", "repro"], repo, env)
    assert "Running stage 'configure'" in rerun
    assert "Running stage 'pipeline/" not in rerun, rerun  # no train, evaluate or sweep stage

    # Changing the seed reruns the stage and changes the data; the analytics switch stays committed.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["synthesize"]["seed"] = 5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "synthesize" in _run(["dvc", "status"], repo, env)
    _run(["dvc", "repro", "--single-item", "synthesize"], repo, env)  # the rest reran above
    assert _tree_digest(source) != before
    config = (repo / ".dvc" / "config").read_text()
    assert "analytics = false" in config
