"""``ehrcxr evaluate``: every protocol metric of one run from its predictions file (no model).

Writes, for the evaluated split (params ``evaluate.split``):

- ``--out`` (JSON, a DVC metric): each metric's mean over seeds and, with several seeds,
  ``<metric>_std``; ``n_seeds``, ``n_stays``, the calibration error ``ece`` (params
  ``fairness.ece_bins`` bins) and the counts behind the threshold metrics (evaluation/runs.py);
  phenotype metrics are macro means over the 25 labels;
- ``--per-label-out`` (JSON): AUPRC, AUROC, F1, ECE, positives and predicted positives per
  phenotype (mean, and std with several seeds);
- ``--fairness-out`` (JSON, a DVC metric; needs ``--stays``): per sensitive attribute of params
  ``fairness.attributes``, the best − worst group gap of AUPRC, TPR, FPR and ECE, and each
  group's size and values (evaluation/fairness.py).
"""

from __future__ import annotations

import argparse
import json

from ehrcxr import params as params_mod


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--predictions", required=True, help="file written by `ehrcxr train`")
    parser.add_argument("--task", required=True, help="mortality | phenotype | los")
    parser.add_argument("--out", required=True, help="metrics file (JSON)")
    parser.add_argument("--per-label-out", default=None, help="per-phenotype metrics file (JSON)")
    parser.add_argument("--fairness-out", default=None, help="fairness gaps file (JSON)")
    parser.add_argument(
        "--stays", default=None, help="cohort.parquet of `ehrcxr extract` (sensitive attributes)"
    )
    parser.add_argument("--params", default="params.yaml", help="params file")


def _write(path: str, payload: dict) -> None:
    from ehrcxr.io import write_text_atomic

    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def run(args: argparse.Namespace) -> None:
    from ehrcxr.errors import EhrcxrError
    from ehrcxr.evaluation.fairness import fairness_report
    from ehrcxr.evaluation.runs import check_predictions, evaluate_predictions
    from ehrcxr.io import read_parquet
    from ehrcxr.tasks import get_task

    params = params_mod.load(args.params)
    split = params_mod.section(params, "evaluate")["split"]
    task = get_task(args.task)
    fair = params_mod.section(params, "fairness")
    if args.fairness_out and not args.stays:
        raise EhrcxrError("--fairness-out needs --stays (the cohort table)")
    predictions = read_parquet(args.predictions, "predictions file")
    try:
        check_predictions(predictions, task, split)
    except EhrcxrError as exc:
        raise EhrcxrError(f"{args.predictions}: {exc}") from None
    # Every number first, then every file: a failure leaves no output half-written.
    outputs = {}
    headline, per_label = evaluate_predictions(predictions, task, split, int(fair["ece_bins"]))
    outputs[args.out] = headline
    if args.per_label_out:
        outputs[args.per_label_out] = per_label
    if args.fairness_out:
        stays = read_parquet(args.stays, "cohort table", columns=["stay_id", *fair["attributes"]])
        scored = predictions.loc[predictions["split"] == split, "stay_id"]
        unknown = int((~scored.isin(stays["stay_id"])).sum())
        if unknown:
            raise EhrcxrError(
                f"{args.predictions}: {unknown} {split} stay(s) are not in the cohort table "
                f"{args.stays} (predictions of another extraction?)"
            )
        outputs[args.fairness_out] = fairness_report(
            predictions,
            stays,
            task,
            split,
            attributes=fair["attributes"],
            min_group_size=int(fair["min_group_size"]),
            n_bins=int(fair["ece_bins"]),
        )
    for path, payload in outputs.items():
        _write(path, payload)
