"""``ehrcxr synthesize``: write the synthetic MIMIC-IV + MIMIC-CXR-JPG source."""

from __future__ import annotations

import argparse
import json
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory (replaced atomically)")
    parser.add_argument("--n-patients", type=int, required=True, help="number of patients")
    parser.add_argument(
        "--seed", type=int, required=True, help="random seed; same seed, same files"
    )
    parser.add_argument("--workers", type=int, default=2, help="processes that render images")


def run(args: argparse.Namespace) -> None:
    from ehrcxr.data.synthetic import synthesize

    start = time.perf_counter()
    summary = synthesize(args.out, n_patients=args.n_patients, seed=args.seed, workers=args.workers)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(summary, sort_keys=True))
