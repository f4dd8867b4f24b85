"""``ehrcxr synthesize``: write the synthetic MIMIC-IV + MIMIC-CXR-JPG source."""

from __future__ import annotations

import argparse
import json
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory (replaced atomically)")
    parser.add_argument(
        "--n-patients", type=int, default=None, help="number of patients (default: params)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed; same seed, same files (default: params)",
    )
    parser.add_argument("--params", default="params.yaml", help="params file (section synthesize)")
    parser.add_argument("--workers", type=int, default=2, help="processes that render images")


def run(args: argparse.Namespace) -> None:
    from ehrcxr import params as params_mod
    from ehrcxr.data.synthetic import synthesize

    if args.n_patients is None or args.seed is None:
        section = params_mod.section(params_mod.load(args.params), "synthesize")
        args.n_patients = section["n_patients"] if args.n_patients is None else args.n_patients
        args.seed = section["seed"] if args.seed is None else args.seed
    start = time.perf_counter()
    summary = synthesize(args.out, n_patients=args.n_patients, seed=args.seed, workers=args.workers)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(summary, sort_keys=True))
