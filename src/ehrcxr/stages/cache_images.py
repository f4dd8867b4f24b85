"""``ehrcxr cache-images``: the matched stays' films as one uint8 array (data/image_cache.py).

Reads ``--extract``/cohort.parquet and the CXR root; writes to ``--out``:

- ``images.npy``: uint8 [M, S, S], one row per distinct film (S = params ``cache_images.crop``);
- ``index.csv``: ``stay_id, row, dicom_id`` for every matched stay (row into ``images.npy``).
"""

from __future__ import annotations

import argparse
import io
import json

import numpy as np

from ehrcxr import params as params_mod
from ehrcxr.io import atomic_path, read_parquet
from ehrcxr.stages._source import add_source_arguments, resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser, database=False)
    parser.add_argument("--extract", required=True, help="folder written by `ehrcxr extract`")
    parser.add_argument("--out", required=True, help="output folder")


def run(args: argparse.Namespace) -> None:
    from ehrcxr.data.image_cache import build_cache

    params = params_mod.load(args.params)
    p = params_mod.cache_images_params(params)
    _, cxr_root = resolve(args, params)
    cohort = read_parquet(f"{args.extract}/cohort.parquet", "cohort table (ehrcxr extract)")
    matched = cohort[cohort["matched"]][["stay_id", "subject_id", "cxr_study_id", "dicom_id"]]
    images, index = build_cache(matched, cxr_root, p.resize, p.crop)
    with atomic_path(args.out) as out:
        out.mkdir(parents=True)
        buf = io.BytesIO()
        np.save(buf, images)
        (out / "images.npy").write_bytes(buf.getvalue())
        index.to_csv(out / "index.csv", index=False)
    print(json.dumps({"images": int(images.shape[0]), "size": p.crop}))
