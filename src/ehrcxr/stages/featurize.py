"""``ehrcxr featurize``: hourly features → the EHR tensor [N, 48, F + M] (data/features.py).

Reads ``--extract`` (cohort.parquet, hourly.parquet); writes to ``--out``:

- ``ehr.npy``: float32 [N, T, F + M], stays in cohort order (stay_id ascending): F feature values
  (scaled), then M mask channels (1 = measured in that hour);
- ``stays.csv``: ``row, stay_id, split`` — the row of each stay in ``ehr.npy``;
- ``features.json``: ``value_names`` (F), ``mask_names`` (M), training ``median``, ``iqr`` and
  ``scale`` (the divisor: max(IQR, winsorised σ)) per feature, ``dropped`` features, training
  ``missing_fraction`` per feature.

Refuses (exit 2, one line naming the features) an ``hourly.parquet`` holding ±inf, which
``ehrcxr extract`` never writes, and never writes an ``ehr.npy`` with a non-finite entry.
"""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
import pandas as pd

from ehrcxr import params as params_mod
from ehrcxr.io import atomic_path, read_parquet


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--extract", required=True, help="folder written by `ehrcxr extract`")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--params", default="params.yaml", help="params file")


def run(args: argparse.Namespace) -> None:
    from ehrcxr.data import features, hourly

    params = params_mod.load(args.params)
    p = params_mod.featurize_params(params)
    window = params_mod.extract_params(params).window_hours
    made = "cohort table (ehrcxr extract)"
    cohort = read_parquet(f"{args.extract}/cohort.parquet", made, columns=["stay_id", "split"])
    table = read_parquet(f"{args.extract}/hourly.parquet", "hourly features (ehrcxr extract)")
    names = hourly.feature_table()["name"].tolist()
    stay_ids = cohort["stay_id"].to_numpy()
    fs = features.build(
        table,
        stay_ids,
        (cohort["split"] == "train").to_numpy(),
        names,
        hourly.indicator_names(),
        window,
        p.max_missing_fraction,
    )
    with atomic_path(args.out) as out:
        out.mkdir(parents=True)
        buf = io.BytesIO()
        np.save(buf, fs.tensor)
        (out / "ehr.npy").write_bytes(buf.getvalue())
        pd.DataFrame(
            {"row": np.arange(len(stay_ids)), "stay_id": stay_ids, "split": cohort["split"]}
        ).to_csv(out / "stays.csv", index=False)
        meta = {
            "shape": list(fs.tensor.shape),
            "value_names": fs.value_names,
            "mask_names": fs.mask_names,
            "median": fs.median,
            "iqr": fs.iqr,
            "scale": fs.scale,
            "dropped": fs.dropped,
            "missing_fraction": fs.missing_fraction,
        }
        (out / "features.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps({"shape": list(fs.tensor.shape), "dropped": fs.dropped}))
