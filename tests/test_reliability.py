"""Bad inputs, interruptions and data protection (README, "Reliability").

Every bad input a user can fix ends in exit 2 and one line on stderr that names the input and the
problem, without a traceback and without a new or changed file; a stage killed at any point
leaves nothing where git sees it, and its rerun equals a clean run byte for byte.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ehrcxr.data.cxr import read_metadata
from ehrcxr.errors import EhrcxrError
from ehrcxr.evaluation.runs import check_predictions, evaluate_predictions
from ehrcxr.io import TMP_PREFIX
from ehrcxr.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
METADATA = "mimic-cxr-2.0.0-metadata.csv.gz"


def _env() -> dict[str, str]:
    return {**os.environ, "EHRCXR_WARM": "0", "WANDB_MODE": "disabled"}


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ehrcxr.cli", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _tree(root: Path) -> dict[str, str]:
    """Every file and link under ``root``: its content hash (a link: its target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = f"-> {os.readlink(path)}"
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            out[rel] = "dir"
    return out


# ---- the bad-input table --------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """``setup(work, data)`` prepares the work folder and returns the command's arguments;
    ``names``: what the one line must mention (the input and the problem)."""

    id: str
    setup: Callable[[Path, dict[str, Path]], list[str]]
    names: tuple[str, ...]


def _params(work: Path, edit: Callable[[dict], None] | None = None, text: str | None = None) -> str:
    path = work / "params.yaml"
    if text is not None:
        path.write_text(text)
    else:
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        if edit is not None:
            edit(params)
        path.write_text(yaml.safe_dump(params, sort_keys=False))
    return str(path)


def _train_args(work: Path, data: dict[str, Path], params: str, **paths: Path) -> list[str]:
    where = {k: paths.get(k, data[k]) for k in ("extract", "features", "images")}
    return [
        "train", "--model", "lstm", "--task", "mortality", "--cohort", "matched",
        "--extract", str(where["extract"]), "--features", str(where["features"]),
        "--images", str(where["images"]), "--out", str(work / "models"),
        "--predictions", str(work / "pred.parquet"), "--params", params,
    ]  # fmt: skip


def _with_train(edit: Callable[[dict], None]) -> Callable[[Path, dict[str, Path]], list[str]]:
    return lambda work, data: _train_args(work, data, _params(work, edit))


def _evaluate_args(work: Path, predictions: Path, task: str = "mortality") -> list[str]:
    return [
        "evaluate", "--predictions", str(predictions), "--task", task,
        "--out", str(work / "metrics.json"), "--per-label-out", str(work / "per_label.json"),
        "--params", _params(work),
    ]  # fmt: skip


def _bad_predictions(
    change: Callable[[pd.DataFrame], pd.DataFrame], task: str = "mortality"
) -> Callable[[Path, dict[str, Path]], list[str]]:
    def setup(work: Path, data: dict[str, Path]) -> list[str]:
        frame = change(_predictions(data, task))
        frame.to_parquet(work / "pred.parquet", index=False)
        return _evaluate_args(work, work / "pred.parquet", task)

    return setup


def _predictions(data: dict[str, Path], task: str) -> pd.DataFrame:
    """A well-formed predictions file of ``task`` for the small cohort's val and test stays
    (what ``ehrcxr train`` writes: stay_id, split, seed, prob_*, label_*)."""
    cohort = pd.read_parquet(data["extract"] / "cohort.parquet")
    part = cohort[cohort["split"].isin(["val", "test"])].reset_index(drop=True)
    t = get_task(task)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"stay_id": part["stay_id"], "split": part["split"], "seed": 42})
    if t.kind == "multiclass":
        p = rng.dirichlet(np.ones(t.n_outputs), len(part))
        frame[t.prob_columns] = p
        frame[t.label_columns[0]] = part[t.labels[0]].to_numpy()
    else:
        frame[t.prob_columns] = rng.random((len(part), len(t.labels)))
        frame[t.label_columns] = part[list(t.labels)].to_numpy()
    return frame


def _cxr_copy(work: Path, source: Path, metadata: bytes | None = None) -> Path:
    """A CXR root in ``work``: the films linked from ``source``, the metadata given or copied."""
    root = work / "cxr"
    root.mkdir()
    (root / "files").symlink_to(source / "cxr" / "files")
    data = (source / "cxr" / METADATA).read_bytes() if metadata is None else metadata
    (root / METADATA).write_bytes(data)
    return root


def _metadata_text(source: Path) -> list[str]:
    return gzip.decompress((source / "cxr" / METADATA).read_bytes()).decode().splitlines()


def _bad_metadata(change: Callable[[list[str]], list[str]]):
    def setup(work: Path, data: dict[str, Path]) -> list[str]:
        lines = change(_metadata_text(data["source"]))
        root = _cxr_copy(work, data["source"], gzip.compress("\n".join(lines).encode() + b"\n"))
        return _extract_args(work, data, root)

    return setup


def _extract_args(work: Path, data: dict[str, Path], cxr_root: Path | None = None) -> list[str]:
    args = ["extract", "--synthetic", str(data["source"]), "--out", str(work / "extract")]
    if cxr_root is not None:
        args += ["--cxr-root", str(cxr_root)]
    return [*args, "--params", _params(work)]


def _set_column(lines: list[str], column: str, value: str, row: int = 1) -> list[str]:
    header = lines[0].split(",")
    fields = lines[row].split(",")
    fields[header.index(column)] = value
    return [*lines[:row], ",".join(fields), *lines[row + 1 :]]


def _drop_column(lines: list[str], column: str) -> list[str]:
    k = lines[0].split(",").index(column)
    return [",".join(f for j, f in enumerate(line.split(",")) if j != k) for line in lines]


def _missing_column_source(work: Path, data: dict[str, Path]) -> list[str]:
    """A copy of the SQLite source whose vitalsign table lacks heart_rate."""
    source = work / "synthetic"
    shutil.copytree(data["source"] / "mimiciv", source / "mimiciv")
    (source / "cxr").symlink_to(data["source"] / "cxr")
    with sqlite3.connect(source / "mimiciv" / "mimiciv_derived.sqlite") as conn:
        conn.execute("ALTER TABLE vitalsign RENAME COLUMN heart_rate TO hr")
    return ["extract", "--synthetic", str(source), "--out", str(work / "extract"),
            "--params", _params(work)]  # fmt: skip


def _film_removed(work: Path, data: dict[str, Path]) -> list[str]:
    """cache-images after a matched film disappeared from the CXR folder."""
    cohort = pd.read_parquet(data["extract"] / "cohort.parquet")
    first = cohort[cohort["matched"]].iloc[0]
    root = work / "cxr"
    shutil.copytree(data["source"] / "cxr", root)
    p = f"p{int(first['subject_id'])}"
    film = (
        root / "files" / p[:3] / p / f"s{int(first['cxr_study_id'])}" / f"{first['dicom_id']}.jpg"
    )
    film.unlink()
    return ["cache-images", "--extract", str(data["extract"]), "--cxr-root", str(root),
            "--out", str(work / "images"), "--params", _params(work)]  # fmt: skip


def _small_split(work: Path, data: dict[str, Path]) -> list[str]:
    """A cohort whose every validation stay was moved to training."""
    extract = work / "extract"
    shutil.copytree(data["extract"], extract)
    cohort = pd.read_parquet(extract / "cohort.parquet")
    cohort["split"] = cohort["split"].replace("val", "train")
    cohort.to_parquet(extract / "cohort.parquet", index=False)
    return _train_args(work, data, _params(work), extract=extract)


def _delete(section: str, key: str) -> Callable[[dict], None]:
    return lambda p: p[section].pop(key)


def _set(section: str, key: str, value: object) -> Callable[[dict], None]:
    return lambda p: p[section].__setitem__(key, value)


CASES = [
    # params.yaml: checked against its schema before anything heavy is imported
    Case("params-lr-text", _with_train(_set("train", "lr", "abc")), ("train.lr", "abc")),
    Case(
        "params-batch-negative", _with_train(_set("train", "batch_size", -3)), ("batch_size", "-3")
    ),
    Case("params-seeds-text", _with_train(_set("train", "seeds", "x")), ("train.seeds", "x")),
    Case("params-missing-key", _with_train(_delete("train", "lr")), ("train.lr",)),
    Case(
        "params-accelerator",
        _with_train(_set("train", "accelerator", "abacus")),
        ("accelerator", "abacus"),
    ),
    Case(
        "params-unregistered-model",
        _with_train(lambda p: p.__setitem__("model", "aug2")),
        ("aug2", "medfuse"),
    ),
    Case(
        "params-yaml-syntax",
        lambda work, data: _train_args(work, data, _params(work, text="train: [1, 2\nlr: 3\n")),
        ("params.yaml", "line"),
    ),
    Case(
        "params-unknown-profile",
        _with_train(lambda p: p.__setitem__("profile", "fastest")),
        ("profile", "fastest"),
    ),
    # arguments
    Case(
        "argument-not-a-number",
        lambda work, data: [*_train_args(work, data, _params(work)), "--missing-ratio", "abc"],
        ("--missing-ratio", "abc"),
    ),
    Case(
        "argument-unknown-task",
        lambda work, data: _evaluate_args(work, work / "none.parquet", "sepsis"),
        ("sepsis",),
    ),
    # missing inputs
    Case(
        "featurize-no-extract",
        lambda work, data: [
            "featurize",
            "--extract",
            str(work / "nowhere"),
            "--out",
            str(work / "features"),
            "--params",
            _params(work),
        ],
        ("nowhere", "ehrcxr extract"),
    ),
    Case(
        "train-no-features",
        lambda work, data: _train_args(work, data, _params(work), features=work / "nowhere"),
        ("nowhere", "featurize"),
    ),
    Case(
        "evaluate-no-predictions",
        lambda work, data: _evaluate_args(work, work / "nowhere.parquet"),
        ("nowhere.parquet",),
    ),
    Case(
        "cache-images-wrong-root",
        lambda work, data: [
            "cache-images",
            "--extract",
            str(data["extract"]),
            "--cxr-root",
            str(work),
            "--out",
            str(work / "images"),
            "--params",
            _params(work),
        ],
        ("files/",),
    ),
    Case("cache-images-film-removed", _film_removed, ("1 missing", "extract")),
    Case("train-split-too-small", _small_split, ("0 val", "too small")),
    # predictions files
    Case(
        "predictions-truncated",
        lambda work, data: (
            _predictions(data, "mortality").to_parquet(work / "full.parquet"),
            (work / "pred.parquet").write_bytes((work / "full.parquet").read_bytes()[:300]),
            (work / "full.parquet").unlink(),
            _evaluate_args(work, work / "pred.parquet"),
        )[-1],
        ("pred.parquet", "not readable"),
    ),
    Case(
        "predictions-not-parquet",
        lambda work, data: (
            (work / "pred.parquet").write_text("stay_id,prob\n1,0.5\n"),
            _evaluate_args(work, work / "pred.parquet"),
        )[-1],
        ("pred.parquet", "not readable"),
    ),
    Case(
        "predictions-nan",
        _bad_predictions(lambda f: f.assign(prob_mortality=f["prob_mortality"].mask(f.index < 3))),
        ("prob_mortality", "not finite"),
    ),
    Case(
        "predictions-inf",
        _bad_predictions(
            lambda f: f.assign(prob_mortality=f["prob_mortality"].mask(f.index < 2, np.inf))
        ),
        ("prob_mortality", "not finite"),
    ),
    Case(
        "predictions-logits",
        _bad_predictions(lambda f: f.assign(prob_mortality=f["prob_mortality"] * 8 - 4)),
        ("outside [0, 1]",),
    ),
    Case(
        "predictions-duplicated-stays",
        _bad_predictions(lambda f: pd.concat([f, f.iloc[:4]], ignore_index=True)),
        ("4 stay(s) twice",),
    ),
    Case(
        "predictions-missing-label",
        _bad_predictions(lambda f: f.drop(columns=["label_mortality"])),
        ("label_mortality",),
    ),
    Case(
        "predictions-los-not-summing-to-1",
        _bad_predictions(lambda f: f.assign(prob_0=f["prob_0"] + 0.5), task="los"),
        ("sum to 1",),
    ),
    Case(
        "predictions-label-not-binary",
        _bad_predictions(lambda f: f.assign(label_mortality=f["label_mortality"] * 2)),
        ("label(s) outside [0, 1]",),
    ),
    Case(
        "fairness-stays-of-another-extraction",
        lambda work, data: (
            pd.DataFrame(
                {"stay_id": [1, 2], "race_group": "a", "gender": "F", "age_group": "x"}
            ).to_parquet(work / "stays.parquet"),
            [
                *_evaluate_args(work, _write_predictions(work, data)),
                "--fairness-out",
                str(work / "fairness.json"),
                "--stays",
                str(work / "stays.parquet"),
            ],
        )[-1],
        ("not in the cohort table",),
    ),
    # the CXR metadata CSV
    Case(
        "metadata-not-gzipped",
        lambda work, data: _extract_args(
            work,
            data,
            _cxr_copy(work, data["source"], "\n".join(_metadata_text(data["source"])).encode()),
        ),
        (METADATA, "gzipped CSV"),
    ),
    Case(
        "metadata-truncated-gzip",
        lambda work, data: _extract_args(
            work,
            data,
            _cxr_copy(
                work, data["source"], (data["source"] / "cxr" / METADATA).read_bytes()[:2000]
            ),
        ),
        (METADATA, "not a readable"),
    ),
    Case(
        "metadata-study-time-text",
        _bad_metadata(lambda lines: _set_column(lines, "StudyTime", "noon", row=5)),
        ("StudyTime",),
    ),
    Case(
        "metadata-subject-text",
        _bad_metadata(lambda lines: _set_column(lines, "subject_id", "p1000", row=2)),
        ("subject_id",),
    ),
    Case(
        "metadata-missing-column",
        _bad_metadata(lambda lines: _drop_column(lines, "ViewPosition")),
        ("ViewPosition",),
    ),
    Case("metadata-empty", _bad_metadata(lambda lines: []), (METADATA, "empty")),
    # the database
    Case("database-missing-column", _missing_column_source, ("heart_rate", "sqlite")),
]


def _write_predictions(work: Path, data: dict[str, Path]) -> Path:
    path = work / "pred.parquet"
    _predictions(data, "mortality").to_parquet(path, index=False)
    return path


@pytest.fixture()
def bad_input_data(small_data: dict[str, Path], small_source: Path) -> dict[str, Path]:
    return {**small_data, "source": small_source}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_bad_input_is_one_line_exit_2_and_writes_nothing(
    case: Case, bad_input_data: dict[str, Path], tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    args = case.setup(work, bad_input_data)
    before = _tree(work)
    shared = _tree(bad_input_data["root"])
    done = _cli(args, work)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"ehrcxr {args[0]}: error: "), lines[0]
    for name in case.names:
        assert name in lines[0], (name, lines[0])
    assert _tree(work) == before  # nothing new, changed or removed
    assert _tree(bad_input_data["root"]) == shared


def test_permission_denied_on_the_database_is_one_line(
    small_postgres_url: str, small_source: Path, tmp_path: Path
) -> None:
    """A role that may log in but read no MIMIC table (a real server, a real GRANT model)."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    admin = sa.create_engine(small_postgres_url)
    with admin.connect() as conn:
        conn.execute(sa.text("DROP ROLE IF EXISTS ehrcxr_nobody"))
        conn.execute(sa.text("CREATE ROLE ehrcxr_nobody LOGIN PASSWORD 'pw-0a9f'"))
        conn.commit()
    admin.dispose()
    url = make_url(small_postgres_url).set(username="ehrcxr_nobody", password="pw-0a9f")
    work = tmp_path / "work"
    work.mkdir()
    args = ["extract", "--db-url", url.render_as_string(hide_password=False),
            "--cxr-root", str(small_source / "cxr"), "--out", str(work / "extract"),
            "--params", _params(work)]  # fmt: skip
    before = _tree(work)
    done = _cli(args, work)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "permission denied" in lines[0] and "pw-0a9f" not in done.stderr, lines[0]
    assert _tree(work) == before


def test_the_bad_input_count_in_the_readme_is_the_tables() -> None:
    readme = (REPO / "README.md").read_text()
    assert f"{len(CASES) + 1} bad inputs" in readme  # + the permission test


def test_temporary_outputs_are_git_ignored() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", f"data/{TMP_PREFIX}extract.123.abc/cohort.parquet"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert ignored.returncode == 0, "a stage's temporary folder is not git-ignored"


# ---- fuzzing the two readers of files users hand over ---------------------------------------


def test_fuzzed_metadata_is_read_or_refused_in_one_line(small_source: Path, tmp_path: Path) -> None:
    """Random row damage: truncated rows, extra fields, junk values, cut files. The reader either
    returns the well-formed rows (and sets the short/long ones aside, counted) or raises
    EhrcxrError with one line; never another exception."""
    lines = _metadata_text(small_source)
    n_rows = len(lines) - 1
    rng = np.random.default_rng(13)
    outcomes = {"read": 0, "refused": 0}
    for trial in range(40):
        damaged = list(lines)
        kinds = []
        for _ in range(int(rng.integers(1, 4))):
            row = int(rng.integers(1, len(damaged)))
            kind = rng.choice(["short", "long", "junk", "cut", "blank"])
            kinds.append(kind)
            fields = damaged[row].split(",")
            if kind == "short":
                damaged[row] = ",".join(fields[: int(rng.integers(1, len(fields)))])
            elif kind == "long":
                damaged[row] = damaged[row] + ",extra"
            elif kind == "junk":
                k = int(rng.integers(0, len(fields)))
                fields[k] = rng.choice(["x", "", "1e400", "-", "\u00e9"])
                damaged[row] = ",".join(fields)
            elif kind == "cut":
                damaged = damaged[:row]
            else:
                damaged[row] = ""
        root = tmp_path / f"cxr{trial}"
        root.mkdir()
        (root / METADATA).write_bytes(gzip.compress("\n".join(damaged).encode()))
        try:
            meta = read_metadata(root)
        except EhrcxrError as exc:
            assert "\n" not in str(exc) and METADATA in str(exc)
            outcomes["refused"] += 1
            continue
        outcomes["read"] += 1
        data_rows = sum(1 for line in damaged[1:] if line.strip())
        assert len(meta.frame) + len(meta.malformed) == data_rows
        assert meta.frame["study_datetime"].notna().all()
        if set(kinds) <= {"short", "long"}:
            assert len(meta.malformed) >= 1
    assert outcomes["read"] and outcomes["refused"], outcomes  # both paths were exercised
    assert n_rows > 100


def test_fuzzed_predictions_are_evaluated_or_refused_in_one_line(
    bad_input_data: dict[str, Path],
) -> None:
    """Random damage to a predictions file: a refused file says why in one line; an accepted one
    gives finite metrics (or null where a metric is undefined), never NaN."""
    rng = np.random.default_rng(7)
    outcomes = {"evaluated": 0, "refused": 0}
    for trial in range(60):
        task = ["mortality", "phenotype", "los"][trial % 3]
        t = get_task(task)
        frame = _predictions(bad_input_data, task)
        kind = rng.choice(
            ["none", "nan", "big", "negative", "string", "dup", "drop", "seed", "rows"]
        )
        column = str(rng.choice(t.prob_columns + t.label_columns))
        rows = rng.choice(len(frame), size=int(rng.integers(1, 5)), replace=False)
        if kind in ("nan", "big", "negative"):
            frame[column] = frame[column].astype(float)  # label columns are integers
        if kind == "nan":
            frame.loc[rows, column] = np.nan
        elif kind == "big":
            frame.loc[rows, column] = 1e9
        elif kind == "negative":
            frame.loc[rows, column] = -0.5
        elif kind == "string":
            frame[column] = frame[column].astype(object)
            frame.loc[rows, column] = "x"
        elif kind == "dup":
            frame = pd.concat([frame, frame.iloc[rows]], ignore_index=True)
        elif kind == "drop":
            frame = frame.drop(columns=[column])
        elif kind == "seed":
            frame = pd.concat([frame, frame.iloc[rows].assign(seed=7)], ignore_index=True)
        elif kind == "rows":
            frame = frame.iloc[rows].reset_index(drop=True)  # a few stays only: valid
        try:
            check_predictions(frame, t, "test")
        except EhrcxrError as exc:
            assert "\n" not in str(exc)
            outcomes["refused"] += 1
            assert kind != "none"
            continue
        outcomes["evaluated"] += 1
        assert kind in ("none", "rows") or (kind == "dup" and not (frame["split"] == "test").any())
        headline, _ = evaluate_predictions(frame, t, "test", 10)
        for key, value in headline.items():
            assert value is None or not isinstance(value, float) or np.isfinite(value), key
    assert outcomes["evaluated"] and outcomes["refused"], outcomes


# ---- interruption ---------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    return subprocess.run(
        ["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture()
def scratch_git(tmp_path: Path) -> Path:
    """A git repository with the project's ignore rules (the tracked .gitignore files, among
    them the ones DVC writes for its outputs) and its params."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in _git(REPO, "ls-files", "*.gitignore", ".gitignore").split():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, repo / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update({"max_epochs": 2, "max_batches": -1, "min_epochs": 1})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "scratch")
    return repo


CELL = "lstm-mortality-matched"


def _stage_commands(source: Path) -> list[tuple[str, list[str], list[str]]]:
    """(stage, command, outputs compared byte for byte) in pipeline order, at the paths DVC uses."""
    return [
        ("extract", ["extract", "--synthetic", str(source), "--out", "data/extract"],
         ["data/extract"]),
        ("featurize", ["featurize", "--extract", "data/extract", "--out", "data/features"],
         ["data/features"]),
        ("cache-images", ["cache-images", "--synthetic", str(source), "--extract", "data/extract",
                          "--out", "data/images"], ["data/images"]),
        ("train", ["train", "--model", "lstm", "--task", "mortality", "--cohort", "matched",
                   "--out", f"models/{CELL}", "--predictions", f"data/predictions/{CELL}.parquet",
                   "--curves", f"metrics/curves/{CELL}.csv"],
         [f"data/predictions/{CELL}.parquet", f"metrics/curves/{CELL}.csv"]),
        ("evaluate", ["evaluate", "--predictions", f"data/predictions/{CELL}.parquet",
                      "--task", "mortality", "--out", f"metrics/benchmark/{CELL}.json",
                      "--stays", "data/extract/cohort.parquet",
                      "--fairness-out", f"metrics/fairness/{CELL}.json"],
         [f"metrics/benchmark/{CELL}.json", f"metrics/fairness/{CELL}.json"]),
    ]  # fmt: skip


def _outputs(repo: Path, paths: list[str]) -> dict[str, str]:
    out = {}
    for p in paths:
        target = repo / p
        items = sorted(target.rglob("*")) if target.is_dir() else [target]
        for f in items:
            if f.is_file():
                out[str(f.relative_to(repo))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _remove(repo: Path, paths: list[str]) -> None:
    for p in paths:
        target = repo / p
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def _untracked(repo: Path) -> list[str]:
    """What ``git add -A`` would add: untracked files git does not ignore."""
    status = _git(repo, "status", "--porcelain", "--untracked-files=all")
    return [line for line in status.splitlines() if line.startswith("??")]


@pytest.mark.slow
def test_a_stage_killed_anywhere_leaves_nothing_for_git_and_reruns_identically(
    scratch_git: Path, small_source: Path
) -> None:
    """SIGINT (Ctrl-C) and SIGKILL at seeded random points of each stage: git sees nothing new,
    Ctrl-C prints one line, and the rerun's outputs equal the clean run's byte for byte."""
    repo = scratch_git
    rng = np.random.default_rng(2026)
    outcomes = []
    for stage, args, paths in _stage_commands(small_source):
        start = time.perf_counter()
        clean = _cli(args, repo)
        assert clean.returncode == 0, clean.stderr
        seconds = time.perf_counter() - start
        expected = _outputs(repo, paths)
        assert expected, stage
        _git(repo, "add", "-A")  # the metrics git tracks, as a commit would hold them
        _git(repo, "commit", "-qm", stage, "--allow-empty")
        for sig in (signal.SIGINT, signal.SIGKILL):
            # A seeded point inside the clean run's duration; a run that finished first (a
            # loaded machine is slower or faster than the clean run) is struck earlier again.
            fraction = float(rng.uniform(0.3, 0.9))
            for _ in range(4):
                _remove(repo, paths)  # as DVC does before it reruns a stage
                process = subprocess.Popen(
                    [sys.executable, "-m", "ehrcxr.cli", *args],
                    cwd=repo,
                    env=_env(),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                time.sleep(fraction * seconds)
                process.send_signal(sig)
                _, stderr = process.communicate(timeout=120)
                if process.returncode != 0:
                    break
                fraction /= 2
            outcomes.append((stage, sig, process.returncode))
            assert _untracked(repo) == [], (stage, sig, _untracked(repo))
            if sig == signal.SIGINT and process.returncode != 0:
                assert process.returncode == 130, (stage, stderr)
                assert "Traceback" not in stderr, (stage, stderr)
                said = [line for line in stderr.splitlines() if "nterrupt" in line]
                assert said == [f"ehrcxr {stage}: interrupted; no output was replaced"], stderr
            rerun = _cli(args, repo)
            assert rerun.returncode == 0, rerun.stderr
            assert _outputs(repo, paths) == expected, (stage, sig)
            assert not list(repo.rglob(f"{TMP_PREFIX}*")), (stage, sig)  # leftovers removed
            assert _untracked(repo) == [] and _git(repo, "status", "--porcelain") == ""
    # The signals struck while the stages worked (not after they had finished).
    interrupted = [stage for stage, sig, rc in outcomes if sig == signal.SIGINT and rc == 130]
    killed = [stage for stage, sig, rc in outcomes if sig == signal.SIGKILL and rc == -9]
    assert len(interrupted) == 5 and len(killed) == 5, outcomes
