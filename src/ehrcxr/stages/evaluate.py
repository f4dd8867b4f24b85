"""``ehrcxr evaluate``: every protocol metric from a predictions file (no model, no torch).

Writes ``--out`` (JSON, a DVC metric): for the evaluated split, each metric's mean over seeds and,
with several seeds, ``<metric>_std``; ``n_seeds`` and ``n_stays`` (phenotype metrics are macro
means over the 25 labels). ``--per-label-out`` (JSON): AUPRC and AUROC per phenotype.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--predictions", required=True, help="file written by `ehrcxr train`")
    parser.add_argument("--task", required=True, help="mortality | phenotype | los")
    parser.add_argument("--split", default="test", help="split to evaluate (val | test)")
    parser.add_argument("--out", required=True, help="metrics file (JSON)")
    parser.add_argument("--per-label-out", default=None, help="per-phenotype metrics file (JSON)")


def run(args: argparse.Namespace) -> None:
    import pandas as pd

    from ehrcxr.evaluation.report import evaluate_predictions
    from ehrcxr.io import write_text_atomic
    from ehrcxr.tasks import get_task

    predictions = pd.read_parquet(args.predictions)
    headline, per_label = evaluate_predictions(predictions, get_task(args.task), args.split)
    write_text_atomic(args.out, json.dumps(headline, indent=2, sort_keys=True) + "\n")
    if args.per_label_out:
        write_text_atomic(
            args.per_label_out, json.dumps(per_label, indent=2, sort_keys=True) + "\n"
        )
