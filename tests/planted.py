"""The planted source of the known-answer tests and the learning harness.

8,000 synthetic patients (seed 11) synthesised, extracted, featurised and cached through the
CLI with the committed params: large enough to learn the planted signal from (≈ 1,200 matched
stays). Built once per test session by whichever process takes its lock first: under
pytest-xdist the controller starts ``python tests/planted.py ROOT`` in the background at the
start of the session (conftest.py), so the workers' first known-answer test finds it built or
being built instead of one worker building it while the other waits.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLANTED_PATIENTS = 8000
PLANTED_SEED = 11


def planted_paths(root: Path) -> dict[str, Path]:
    return {
        "root": root,
        "extract": root / "extract",
        "features": root / "features",
        "images": root / "images",
    }


def build_planted(root: Path) -> None:
    """Build the planted source under ``root`` (the caller holds its lock); ``root/complete``
    marks a finished build."""
    from ehrcxr.cli import main

    paths = planted_paths(root)
    root.mkdir(parents=True, exist_ok=True)
    p = ["--params", str(REPO / "params.yaml")]
    src = root / "synthetic"
    seed = ["--n-patients", str(PLANTED_PATIENTS), "--seed", str(PLANTED_SEED)]
    steps = [
        ["synthesize", "--out", str(src), *seed],
        ["extract", "--synthetic", str(src), "--out", str(paths["extract"])],
        ["featurize", "--extract", str(paths["extract"]), "--out", str(paths["features"])],
        ["cache-images", "--synthetic", str(src), "--extract", str(paths["extract"]),
         "--out", str(paths["images"])],
    ]  # fmt: skip
    for step in steps:
        if main([*step, *p]) != 0:
            raise RuntimeError(f"building the planted source: `ehrcxr {step[0]}` failed")
    (root / "complete").touch()


if __name__ == "__main__":  # the background builder: its lock is the inherited descriptor
    build_planted(Path(sys.argv[1]))
