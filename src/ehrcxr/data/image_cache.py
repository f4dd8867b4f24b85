"""Decode each chosen JPEG once into one uint8 array, so DVC tracks one file, not thousands.

Transform (protocol, paper profile: resize 256, crop 224): resize the shorter side to ``resize``
pixels (bilinear), then crop the centre ``crop`` × ``crop``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ehrcxr.data.cxr import image_path
from ehrcxr.errors import EhrcxrError


def transform(path: Path, resize: int, crop: int) -> np.ndarray:
    """One film → uint8 [crop, crop]."""
    with Image.open(path) as im:
        im.draft("L", (resize, resize))  # JPEG DCT scaling: never below the requested size
        im = im.convert("L")
        w, h = im.size
        scale = resize / min(w, h)
        im = im.resize((max(crop, round(w * scale)), max(crop, round(h * scale))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - crop) // 2, (h - crop) // 2
        return np.asarray(im.crop((left, top, left + crop, top + crop)), dtype=np.uint8)


def build_cache(
    matched: pd.DataFrame, root: str | Path, resize: int, crop: int
) -> tuple[np.ndarray, pd.DataFrame]:
    """Images of the matched stays.

    ``matched``: ``stay_id, subject_id, cxr_study_id, dicom_id`` (one row per matched stay).
    Returns (uint8 [M, crop, crop] with one row per distinct dicom_id, index ``stay_id, row,
    dicom_id`` in ``matched`` order).
    """
    if not (Path(root) / "files").is_dir():
        raise EhrcxrError(f"CXR root {root} has no files/ folder (the MIMIC-CXR-JPG layout)")
    unique = matched.drop_duplicates("dicom_id").reset_index(drop=True)
    images = np.zeros((len(unique), crop, crop), dtype=np.uint8)
    failed = {"missing": 0, "unreadable": 0}
    for i, r in enumerate(unique.itertuples(index=False)):
        path = image_path(Path(root), r.subject_id, r.cxr_study_id, r.dicom_id)
        try:
            images[i] = transform(path, resize, crop)
        except FileNotFoundError:
            failed["missing"] += 1
        except (OSError, SyntaxError, ValueError):  # PIL: truncated or not a JPEG
            failed["unreadable"] += 1
    if any(failed.values()):
        # Counts only: a film's path holds its patient's and study's ids.
        raise EhrcxrError(
            f"{failed['missing']} missing and {failed['unreadable']} unreadable of the "
            f"{len(unique)} films the extraction matched under {root}: the CXR folder changed "
            "since `ehrcxr extract` (rerun it: dvc repro extract)"
        )
    row = pd.Series(np.arange(len(unique)), index=unique["dicom_id"].to_numpy())
    index = pd.DataFrame(
        {
            "stay_id": matched["stay_id"].to_numpy().astype(np.int64),
            "row": row.loc[matched["dicom_id"].to_numpy()].to_numpy().astype(np.int64),
            "dicom_id": matched["dicom_id"].to_numpy(),
        }
    )
    return images, index
