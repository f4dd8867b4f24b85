"""``ehrcxr gate``: fail when rerun benchmark metrics fall below the committed ones.

For each run of params ``gate.runs`` (ids ``<model>-<task>-<cohort>``): optionally reproduce it
(``--repro``: ``dvc repro pipeline/evaluate/dvc.yaml:evaluate@<id>``, which reruns whatever it
depends on), then compare every headline metric in ``metrics/benchmark/<id>.json`` with the
same file at ``--against`` (a git revision). A metric that dropped by more than
``gate.tolerance`` fails the gate; so does a missing file or a comparison with nothing in it
(the trap of ``dvc metrics diff`` printing ``{}``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from ehrcxr import params as params_mod
from ehrcxr.errors import EhrcxrError

# Not "higher is better" metrics: the run's sizes and counts, and the calibration error.
SKIP = (
    "n_seeds",
    "n_stays",
    "n_positive",
    "n_predicted_positive",
    "labels_never_predicted_positive",
    "ece",
)
EVALUATE_STAGES = "pipeline/evaluate/dvc.yaml"  # where the grid's evaluate@ stages are


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--against", default="HEAD", help="git revision holding the reference metrics"
    )
    parser.add_argument("--repro", action="store_true", help="rerun the runs with dvc first")
    parser.add_argument(
        "--metrics-dir", default="metrics/benchmark", help="folder of metrics files"
    )
    parser.add_argument("--params", default="params.yaml", help="params file")


def headline(metrics: dict) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and k not in SKIP and not k.endswith("_std")
    }


def compare(reference: dict, current: dict, tolerance: float) -> list[str]:
    """Regressions as lines ``metric: reference → current``; empty when none."""
    ref, cur = headline(reference), headline(current)
    if not ref:
        raise EhrcxrError("the reference metrics hold no numbers: nothing to compare")
    out = []
    for key, old in sorted(ref.items()):
        new = cur.get(key)
        if new is None:
            out.append(f"{key}: {old:.4f} → missing")
        elif new < old - tolerance:
            out.append(f"{key}: {old:.4f} → {new:.4f}")
    return out


def run(args: argparse.Namespace) -> None:
    params = params_mod.load(args.params)
    gate = params.get("gate") or {}
    runs, tolerance = list(gate.get("runs") or []), float(gate.get("tolerance", 0.0))
    if not runs:
        raise EhrcxrError("params.yaml gate.runs is empty: the gate would compare nothing")
    if args.repro:
        targets = [f"{EVALUATE_STAGES}:evaluate@{r}" for r in runs]
        subprocess.run(["dvc", "repro", *targets], check=True)
    failures, compared = [], 0
    for run_id in runs:
        rel = f"{args.metrics_dir}/{run_id}.json"
        shown = subprocess.run(
            ["git", "show", f"{args.against}:{rel}"], capture_output=True, text=True
        )
        if shown.returncode != 0:
            raise EhrcxrError(f"{rel} is not committed at {args.against}")
        path = Path(rel)
        if not path.is_file():
            raise EhrcxrError(f"{rel} was not produced")
        regressions = compare(json.loads(shown.stdout), json.loads(path.read_text()), tolerance)
        compared += len(headline(json.loads(shown.stdout)))
        failures += [f"{run_id} {line}" for line in regressions]
    print(
        f"gate: {compared} metrics of {len(runs)} runs compared with {args.against} "
        f"(tolerance {tolerance})"
    )
    if failures:
        print("gate: metric regression:\n  " + "\n  ".join(failures), file=sys.stderr)
        raise SystemExit(1)
    print("gate: no regression")
