"""Shared fixtures: a small synthetic source and a real PostgreSQL server holding a copy of it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from ehrcxr.data.database import sqlite_url
from ehrcxr.data.pg_cluster import TemporaryPostgres
from ehrcxr.data.synthetic import synthesize
from planted import build_planted, planted_paths

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Each pytest-xdist worker (and every process it starts: ``ehrcxr train``, DVC) runs on its
    own share of the CPUs, so two workers' training runs never oversubscribe the cores: the
    training core caps its threads at the affinity mask (``training.intra_op_threads``).
    Unpinned, two concurrent 2-thread runs on 2 cores took 437 s each instead of 50 s."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cpus = sorted(os.sched_getaffinity(0))
    if worker.startswith("gw") and count > 1 and len(cpus) >= count:
        os.sched_setaffinity(0, cpus[int(worker[2:]) % count :: count])


def _selects_planted_tests(config: pytest.Config) -> bool:
    """Whether this session runs the tests that need the planted source (the whole suite, or
    files among theirs), and does not deselect them (``-m "not slow"``)."""
    if "not slow" in (config.option.markexpr or ""):
        return False
    needs = ("test_harness.py", "test_known_answers.py")
    args = [str(a).split("::")[0] for a in config.args]
    return not args or any(Path(a).is_dir() or Path(a).name in needs for a in args)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under pytest-xdist, the controller (idle while its workers test) builds the planted source
    in the background, holding its lock, so no worker waits idle for it."""
    config = session.config
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", None):
        return
    if not _selects_planted_tests(config):
        return
    root = config._tmp_path_factory.getbasetemp() / "planted"  # the workers' session folder
    root.parent.mkdir(parents=True, exist_ok=True)
    lock = open(root.with_suffix(".lock"), "w")  # handed to the builder
    fcntl.flock(lock, fcntl.LOCK_EX)
    log = open(root.with_suffix(".log"), "w")
    # The builder inherits the locked descriptor: the lock is held until it exits.
    config._planted_builder = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("planted.py")), str(root)],
        pass_fds=[lock.fileno()],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    lock.close()
    log.close()


def pytest_sessionfinish(session: pytest.Session) -> None:
    builder = getattr(session.config, "_planted_builder", None)
    if builder is not None and builder.poll() is None:
        builder.kill()
        builder.wait()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """The learning harness's figures as a table (``tests/test_harness.py`` records them in each
    test's report, which pytest-xdist carries to this process): every run's log shows what each
    model learned, not only whether it passed."""
    rows = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            for name, figures in getattr(report, "user_properties", ()):
                if name == "harness":
                    outcome = report.outcome
                    if hasattr(report, "wasxfail"):  # a reported shortfall (test_harness.py)
                        outcome = "xfail" if report.skipped else "xpass"
                    rows.append((report.nodeid.split("[")[-1].rstrip("]"), outcome, figures))
    if not rows:
        return
    labels = [label for label, _, _ in rows[0][2]["scores"]]  # the harness's phenotypes, in order
    terminalreporter.section("learning harness: test-split AUROC (one-sided 95 % lower bound)")
    terminalreporter.line(
        f"{'model':<14} {'outcome':<8} "
        + " ".join(f"{label[:16]:<16}" for label in labels)
        + f" {'needs-both vs best unimodal (Δ, upper)':<37} run s"
    )
    for model, outcome, figures in sorted(rows):
        cells = " ".join(
            f"{f'{auroc:.3f} ({lower:.3f})':<16}" for _, auroc, lower in figures["scores"]
        )
        versus = figures.get("vs_best_unimodal")
        versus = f"{versus[0]} {versus[1]:+.3f}, {versus[2]:+.3f}" if versus else "-"
        terminalreporter.line(
            f"{model:<14} {outcome:<8} {cells} {versus:<37} {figures.get('seconds') or '-'}"
        )


SMALL_PATIENTS = 200
SMALL_SEED = 0


@pytest.fixture(scope="session")
def small_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ehrcxr synthesize --n-patients 200 --seed 0``, shared by the whole session (read only)."""
    out = tmp_path_factory.mktemp("source") / "synthetic"
    synthesize(out, n_patients=SMALL_PATIENTS, seed=SMALL_SEED)
    return out


@pytest.fixture(scope="session")
def small_sqlite_url(small_source: Path) -> str:
    return sqlite_url(small_source / "mimiciv" / "mimiciv.sqlite")


@pytest.fixture(scope="session")
def ground_truth(small_source: Path) -> pd.DataFrame:
    """The generator's per-stay answers as a frame (one row per ICU stay)."""
    truth = json.loads((small_source / "ground_truth.json").read_text())
    return pd.DataFrame(truth["stays"]["rows"], columns=truth["stays"]["columns"])


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A real PostgreSQL server on 127.0.0.1; never skipped (make test installs PostgreSQL)."""
    with TemporaryPostgres() as url:
        yield url


@pytest.fixture(scope="session")
def small_postgres_url(postgres_url: str, small_source: Path) -> str:
    """The small synthetic source loaded into the session's PostgreSQL."""
    from ehrcxr.data.load_database import load_into_postgres

    load_into_postgres(small_source, postgres_url, replace=True)
    return postgres_url


@pytest.fixture(scope="session")
def small_data(small_source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """extract → featurize → cache-images of the small source, through the CLI."""
    from ehrcxr.cli import main

    root = tmp_path_factory.mktemp("pipeline")
    params = REPO / "params.yaml"
    assert (
        main(
            [
                "extract",
                "--synthetic",
                str(small_source),
                "--out",
                str(root / "extract"),
                "--params",
                str(params),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "featurize",
                "--extract",
                str(root / "extract"),
                "--out",
                str(root / "features"),
                "--params",
                str(params),
            ]
        )
        == 0
    )
    images = ["--synthetic", str(small_source), "--extract", str(root / "extract")]
    assert (
        main(["cache-images", *images, "--out", str(root / "images"), "--params", str(params)]) == 0
    )
    return {
        "root": root,
        "extract": root / "extract",
        "features": root / "features",
        "images": root / "images",
    }


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (a lock file): one pytest-xdist worker at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of this test session shared by its pytest-xdist workers (``make test`` runs two:
    the planted source and each planted run are built once, by whichever worker needs them
    first). Without xdist: the session's own base folder."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def planted_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The planted source (tests/planted.py), shared by the known-answer tests and the harness
    (and by the xdist workers); built here unless the background builder did it."""
    root = _session_dir(tmp_path_factory) / "planted"
    with _exclusive(root.with_suffix(".lock")):
        if not (root / "complete").exists():
            build_planted(root)
    return planted_paths(root)


class PlantedRuns:
    """Phenotyping runs on the planted source, trained once per (model, cohort, missing ratio)
    through ``ehrcxr train`` and shared by the known-answer tests and the harness."""

    SEED = 11

    def __init__(self, data: dict[str, Path]) -> None:
        import yaml

        self.data = data
        self.root = data["root"] / "runs"
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        # The default profile trained long enough to learn the planted signal (CI-sized).
        params["train"].update(
            {
                "max_epochs": 16,
                "max_batches": -1,  # epochs, not the default profile's batch budget
                "min_epochs": 4,
                "patience": 8,
                "batch_size": 32,
                "lr": 0.003,
            }
        )
        params["train"]["seeds"] = [self.SEED]
        params["wandb"].update({"mode": "disabled", "dir": str(self.root)})
        self.root.mkdir(parents=True, exist_ok=True)
        self.params = self.root / "params.yaml"
        with _exclusive(self.root / "params.lock"):  # the xdist workers write the same file
            if not self.params.exists():
                self.params.write_text(yaml.safe_dump(params))
        self.seconds: dict[str, float] = {}

    def predictions(self, model: str, cohort: str = "matched", ratio: float = 0.0) -> pd.DataFrame:
        import time

        from ehrcxr.cli import main

        run = f"{model}-{cohort}-{ratio}"
        out = self.root / f"{run}.parquet"
        with _exclusive(self.root / f"{run}.lock"):
            if out.exists():  # trained by this worker or another
                return pd.read_parquet(out)
            start = time.perf_counter()
            args = [
                "train", "--model", model, "--task", "phenotype", "--cohort", cohort,
                "--missing-ratio", str(ratio), "--extract", str(self.data["extract"]),
                "--features", str(self.data["features"]), "--images", str(self.data["images"]),
                "--out", str(self.root / run), "--predictions", str(out),
                "--params", str(self.params),
            ]  # fmt: skip
            assert main(args) == 0, run
            self.seconds[run] = round(time.perf_counter() - start, 1)
        return pd.read_parquet(out)


@pytest.fixture(scope="session")
def planted_runs(planted_data: dict[str, Path]) -> PlantedRuns:
    return PlantedRuns(planted_data)
