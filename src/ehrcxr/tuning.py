"""Bayesian hyperparameter search of one grid cell (CareBench paper §4.3), on validation only.

The paper's search: scikit-optimize ``gp_minimize`` (a Gaussian-process surrogate with the
``gp_hedge`` acquisition), 20 calls of which the first 5 are random points, each candidate
trained with seeds 42, 123 and 1234 and scored by the mean selection metric (AUPRC for mortality
and phenotyping, accuracy for length of stay). Here every one of those settings is a param
(``tune``), the space is data (``models.<model>.search``), and the score is the metric of the
candidate's **validation** predictions: a trial loads the training and validation stays only
(:func:`ehrcxr.training.train_one` with ``predict_splits=("val",)``), so no test stay, feature
or label is in its process. (The published toolkit scored candidates on the test split:
reference/carebench_models.md §5.)

Resuming: each call is recorded as it ends (its point, per-seed values and time), and after the
optimiser has been told its value scikit-optimize's checkpoint (``CheckpointSaver``, written
atomically) dumps the result so far. A rerun with the same inputs calls ``gp_minimize`` afresh
with the same random state and *replays* the recorded calls: the optimiser asks for the same
points (it is deterministic given its random state and the values it was told), and each is
answered from the record instead of being trained again. So a resumed search is the
uninterrupted one, call for call; a point that differs from the record's (other numerics) ends
the replay there and is trained.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ehrcxr.errors import EhrcxrError

if TYPE_CHECKING:
    from scipy.optimize import OptimizeResult
    from skopt.space import Dimension

    from ehrcxr.training import WandbConfig

ACQ_FUNCS = ("gp_hedge", "EI", "PI", "LCB")
PRIORS = ("uniform", "log-uniform")
RESULT = "result.pkl"  # scikit-optimize's checkpoint (skopt.dump of the OptimizeResult)
SIDECAR = "trials.json"  # each completed call's per-seed values and seconds


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """params.yaml ``tune``: which cells are searched and how (CareBench §4.3's settings)."""

    models: tuple[str, ...]  # searched models; every other model trains with its paper defaults
    tasks: tuple[str, ...]
    cohorts: tuple[str, ...]
    n_calls: int  # objective evaluations, initial random points included (paper: 20)
    n_initial_points: int  # random points before the surrogate is used (paper: 5)
    acq_func: str  # paper: gp_hedge
    random_state: int  # the optimiser's seed (paper: 42)
    seeds: tuple[int, ...]  # training seeds of each candidate (paper: 42, 123, 1234)

    def __post_init__(self) -> None:
        if self.acq_func not in ACQ_FUNCS:
            raise EhrcxrError(f"params.yaml tune.acq_func must be one of {ACQ_FUNCS}")
        if not 1 <= self.n_initial_points <= self.n_calls:
            raise EhrcxrError("params.yaml tune: need 1 ≤ n_initial_points ≤ n_calls")
        if not self.seeds:
            raise EhrcxrError("params.yaml tune.seeds: at least one seed")

    def searched(self, model: str, task: str, cohort: str) -> bool:
        """Whether the cell (``model``, ``task``, ``cohort``) has a ``tune@`` stage."""
        return model in self.models and task in self.tasks and cohort in self.cohorts


def dimensions(space: dict[str, Any], defaults: dict[str, Any], model: str) -> list[Dimension]:
    """``models.<model>.search`` → scikit-optimize dimensions, in the order written.

    ``{low, high[, prior]}``: an ``Integer`` when both bounds are integers, else a ``Real``
    (prior ``uniform`` or ``log-uniform``); ``{choices: [...]}``: a ``Categorical``. Every name
    must be one of the model's own settings (``models.<model>``).
    """
    from skopt.space import Categorical, Integer, Real

    if not space:
        raise EhrcxrError(f"params.yaml models.{model}.search is empty: nothing to tune")
    dims = []
    for name, spec in space.items():
        where = f"params.yaml models.{model}.search.{name}"
        if name not in defaults:
            raise EhrcxrError(
                f"{where}: {model} has no setting {name!r}; it has {sorted(defaults)}"
            )
        if not isinstance(spec, dict):
            raise EhrcxrError(f"{where}: expected {{low, high[, prior]}} or {{choices}}")
        if set(spec) == {"choices"}:
            choices = list(spec["choices"])
            if len(choices) < 2:
                raise EhrcxrError(f"{where}.choices: at least two values")
            dims.append(Categorical(choices, name=name))
            continue
        if not {"low", "high"} <= set(spec) <= {"low", "high", "prior"}:
            raise EhrcxrError(f"{where}: expected {{low, high[, prior]}} or {{choices}}")
        low, high, prior = spec["low"], spec["high"], spec.get("prior", "uniform")
        if prior not in PRIORS or not low < high:
            raise EhrcxrError(f"{where}: need low < high and a prior in {PRIORS}")
        if isinstance(low, int) and isinstance(high, int):
            dims.append(Integer(low, high, prior=prior, name=name))
        else:
            dims.append(Real(float(low), float(high), prior=prior, name=name))
    return dims


def plain(value: Any) -> Any:
    """A numpy scalar as the Python value (JSON, YAML and the models take plain values)."""
    return value.item() if isinstance(value, np.generic) else value


@dataclasses.dataclass(frozen=True)
class Trial:
    """One call of the search: a configuration and its validation scores."""

    call: int  # 1-based
    hyperparameters: dict[str, Any]  # the searched dimensions only
    values: dict[int, float]  # seed → validation selection metric
    seconds: float  # training and scoring time of all seeds

    @property
    def value(self) -> float:
        """Mean validation selection metric over the seeds (higher is better)."""
        return float(np.mean(list(self.values.values())))

    def to_json(self) -> dict[str, Any]:
        return {
            "call": self.call,
            "hyperparameters": self.hyperparameters,
            "values": {str(k): v for k, v in self.values.items()},
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Trial:
        values = {int(k): float(v) for k, v in d["values"].items()}
        return cls(int(d["call"]), dict(d["hyperparameters"]), values, float(d["seconds"]))


Objective = Callable[[int, dict[str, Any]], Trial]  # (call, searched values) → trial


@dataclasses.dataclass
class SearchResult:
    """A finished search: scikit-optimize's result and every call, in order."""

    result: OptimizeResult  # ``specs["args"]``: the arguments gp_minimize received
    trials: list[Trial]
    replayed: int  # calls answered from the checkpoint instead of trained


class AtomicCheckpointSaver:
    """scikit-optimize's ``CheckpointSaver``, written to a temporary name and renamed into place:
    a search killed while the checkpoint is written leaves the previous one whole."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, res: OptimizeResult) -> None:
        from skopt import dump

        from ehrcxr.io import atomic_path

        with atomic_path(self.path) as tmp:
            dump(res, str(tmp), store_objective=False)


@dataclasses.dataclass
class SavedCall:
    """A completed call in the per-call record, and whether its W&B run was written."""

    trial: Trial
    logged: bool

    def to_json(self) -> dict[str, Any]:
        return {**self.trial.to_json(), "logged": self.logged}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SavedCall:
        return cls(Trial.from_json(d), bool(d["logged"]))


def _saved_calls(checkpoint: Path, names: list[str]) -> list[SavedCall]:
    """The completed calls of an interrupted search, in order.

    The per-call record is written as each call ends, scikit-optimize's checkpoint only after
    the optimiser has been told the value and has fitted its surrogate (seconds later): the
    record drives the replay (a kill in between loses no call), and the checkpoint, where it
    exists and loads, must agree with the record's first calls — otherwise neither is used.
    """
    from skopt import load

    if not (checkpoint / SIDECAR).is_file():
        return []
    saved = [SavedCall.from_json(d) for d in json.loads((checkpoint / SIDECAR).read_text())]
    try:
        previous = load(checkpoint / RESULT) if (checkpoint / RESULT).is_file() else None
    except Exception as exc:  # a damaged checkpoint (any unpickling error): reported, ignored
        print(json.dumps({"tune": "checkpoint unreadable", "error": str(exc)}), flush=True)
        previous = None
    if previous is not None:
        for call, x, y in zip(saved, previous.x_iters, previous.func_vals, strict=False):
            point = dict(zip(names, map(plain, x), strict=True))
            if point != call.trial.hyperparameters or not math.isclose(-call.trial.value, y):
                print(json.dumps({"tune": "checkpoint disagrees: starting afresh"}), flush=True)
                return []
    return saved


def search(
    dims: list[Dimension],
    objective: Objective,
    log: Callable[[Trial], None],
    cfg: TuneConfig,
    checkpoint: Path,
) -> SearchResult:
    """Run (or resume) ``gp_minimize`` over ``dims``; ``checkpoint`` is this search's folder of
    resumable state (created; removed by the caller once the outputs are written). ``log``
    writes a trained call's W&B run, once: after the call is recorded (a kill before that
    retrains the call; a kill after it finds the call recorded and unlogged and logs it)."""
    from skopt import gp_minimize

    names = [d.name for d in dims]
    checkpoint.mkdir(parents=True, exist_ok=True)
    saved = _saved_calls(checkpoint, names)
    done: list[SavedCall] = []
    replayed = 0

    def record() -> None:
        _write_json(checkpoint / SIDECAR, [c.to_json() for c in done])

    def func(x: list) -> float:
        nonlocal saved, replayed
        call = len(done) + 1
        values = dict(zip(names, map(plain, x), strict=True))
        if len(done) < len(saved) and saved[len(done)].trial.hyperparameters == values:
            entry = saved[len(done)]
            replayed += 1
            print(json.dumps({"tune": "replayed", **entry.trial.to_json()}), flush=True)
        else:
            if len(done) < len(saved):
                # Other numerics (another machine's BLAS) asked for another point: train from here.
                print(json.dumps({"tune": "replay diverged", "call": call}), flush=True)
                saved = saved[: len(done)]
            trial = objective(call, values)
            entry = SavedCall(trial, logged=False)
            print(json.dumps({"tune": "call", **trial.to_json(), "value": trial.value}), flush=True)
        done.append(entry)
        record()
        if not entry.logged:
            log(entry.trial)
            entry.logged = True
            record()
        return -entry.trial.value  # gp_minimize minimises

    result = gp_minimize(
        func,
        dims,
        n_calls=cfg.n_calls,
        n_initial_points=cfg.n_initial_points,
        acq_func=cfg.acq_func,
        random_state=cfg.random_state,
        callback=[AtomicCheckpointSaver(checkpoint / RESULT)],
    )
    return SearchResult(result, [c.trial for c in done], replayed)


def trials_table(trials: list[Trial], names: list[str]) -> pd.DataFrame:
    """Every call: ``call``, one column per searched dimension, ``value_seed<S>`` per seed,
    ``value`` (the mean), ``best`` (the best mean so far) and ``seconds``."""
    rows = []
    best = -math.inf
    for t in trials:
        best = max(best, t.value)
        rows.append(
            {
                "call": t.call,
                **{n: t.hyperparameters[n] for n in names},
                **{f"value_seed{s}": v for s, v in t.values.items()},
                "value": t.value,
                "best": best,
                "seconds": t.seconds,
            }
        )
    return pd.DataFrame(rows)


def best_trial(trials: list[Trial]) -> Trial:
    """The call with the highest mean validation metric (the first of equals)."""
    return max(trials, key=lambda t: (t.value, -t.call))


def fingerprint(parts: dict[str, Any], files: list[Path]) -> str:
    """sha256 of what a search's values depend on (settings, code hashes) and of its data files:
    a checkpoint is resumed only by a search with the same fingerprint."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for path in files:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, payload: Any) -> None:
    from ehrcxr.io import write_text_atomic

    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def convergence_plot(table: pd.DataFrame, metric: str, title: str, path: Path) -> None:
    """Each call's mean validation metric and the best so far (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from ehrcxr.io import atomic_path

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(table["call"], table["value"], "o", color="0.6", label="call")
    ax.step(table["call"], table["best"], where="post", color="C0", label="best so far")
    ax.set_xlabel("call")
    ax.set_ylabel(f"validation {metric} (mean over seeds)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# ---- W&B: one offline run per trial, one summary run per search -------------------------------
def _wandb_run(
    wandb_cfg: WandbConfig, name: str, group: str, job_type: str, config: dict[str, Any]
) -> Any:
    """An offline (params ``wandb.mode``; ``WANDB_MODE`` wins) run, or None when disabled."""
    from ehrcxr.training import wandb_mode, wandb_settings

    mode = wandb_mode(wandb_cfg)
    if mode == "disabled":
        return None
    import wandb

    Path(wandb_cfg.dir).mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=wandb_cfg.project,
        dir=wandb_cfg.dir,
        mode=mode,
        name=name,
        group=group,
        job_type=job_type,
        config=config,
        settings=wandb_settings(silent=True),
        reinit="finish_previous",
    )


def log_trial(wandb_cfg: WandbConfig, group: str, trial: Trial, meta: dict[str, Any]) -> None:
    """The trial's configuration and validation metric (per seed and mean): aggregates only."""
    run = _wandb_run(
        wandb_cfg,
        f"{group}/call{trial.call:02d}",
        group,
        "trial",
        {**meta, "call": trial.call, "hyperparameters": trial.hyperparameters},
    )
    if run is None:
        return
    run.log(
        {
            "val_selection": trial.value,
            **{f"val_selection/seed{s}": v for s, v in trial.values.items()},
            "seconds": trial.seconds,
        }
    )
    run.finish()


def log_search(
    wandb_cfg: WandbConfig, group: str, table: pd.DataFrame, best: Trial, meta: dict[str, Any]
) -> None:
    """The search's trials table (a W&B Table) and its best configuration."""
    run = _wandb_run(wandb_cfg, group, group, "search", meta)
    if run is None:
        return
    import wandb

    run.log({"trials": wandb.Table(dataframe=table)})
    run.summary.update(
        {
            "best/value": best.value,
            "best/call": best.call,
            **{f"best/{k}": v for k, v in best.hyperparameters.items()},
        }
    )
    run.finish()
