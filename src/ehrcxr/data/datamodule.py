"""Files of the featurize and cache-images stages → batches (the contract in ehrcxr/batch.py).

Everything is loaded into memory once (the default profile's arrays are a few MB; the paper
profile's ≈ 30k × 48 × 49 floats and ≈ 7k × 224² bytes still fit); a batch is built by slicing
tensors, so there is no per-item Python work.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from ehrcxr.batch import Batch, InputSpec
from ehrcxr.errors import EhrcxrError
from ehrcxr.io import require_inputs
from ehrcxr.tasks import COHORTS, Task

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class DataPaths:
    extract: Path  # folder of `ehrcxr extract` (cohort.parquet)
    features: Path  # folder of `ehrcxr featurize` (ehr.npy, stays.csv, features.json)
    images: Path  # folder of `ehrcxr cache-images` (images.npy, index.csv)


@dataclasses.dataclass
class Arrays:
    """Every stay of the chosen cohort, aligned by row."""

    ehr: torch.Tensor  # float32 [N, T, F]
    ehr_mask: torch.Tensor  # float32 [N, T, M]
    cxr: torch.Tensor  # uint8 [K, H, W] distinct films
    cxr_row: torch.Tensor  # int64 [N], row into cxr, -1 without a film
    cxr_time: torch.Tensor  # float32 [N] hours from ICU admission to the film (0 without one)
    y: torch.Tensor  # float32 [N, C] or int64 [N]
    stay_id: torch.Tensor  # int64 [N]
    split: np.ndarray  # str [N]


def load_arrays(
    paths: DataPaths, task: Task, cohort: str, splits: tuple[str, ...] = SPLITS
) -> tuple[Arrays, InputSpec]:
    """The cohort's stays of ``splits`` (all three by default). A hyperparameter search loads
    ``("train", "val")``: the test stays, their EHR and their labels never enter its process."""
    if cohort not in COHORTS:
        raise EhrcxrError(f"cohort must be one of {COHORTS}, not {cohort!r}")
    require_inputs(paths.extract / "cohort.parquet", made_by="ehrcxr extract")
    require_inputs(
        *(paths.features / n for n in ("ehr.npy", "stays.csv", "features.json")),
        made_by="ehrcxr featurize",
    )
    require_inputs(
        paths.images / "images.npy", paths.images / "index.csv", made_by="ehrcxr cache-images"
    )
    table = pd.read_parquet(paths.extract / "cohort.parquet")
    stays = pd.read_csv(paths.features / "stays.csv")
    meta = json.loads((paths.features / "features.json").read_text())
    if not (stays["stay_id"].to_numpy() == table["stay_id"].to_numpy()).all():
        raise EhrcxrError("features and cohort disagree on the stays: rerun featurize")
    ehr = np.load(paths.features / "ehr.npy", mmap_mode="r")
    n_values = len(meta["value_names"])
    keep = table["matched"].to_numpy() if cohort == "matched" else np.ones(len(table), dtype=bool)
    keep = keep & table["split"].isin(splits).to_numpy()
    index = pd.read_csv(paths.images / "index.csv")
    images = np.load(paths.images / "images.npy")
    film_row = pd.Series(index["row"].to_numpy(), index=index["stay_id"].to_numpy())
    sel = table[keep]
    sizes = sel["split"].value_counts()
    if any(sizes.get(split, 0) == 0 for split in splits):
        shown = ", ".join(f"{sizes.get(split, 0)} {split}" for split in splits)
        raise EhrcxrError(
            f"the {cohort} cohort is too small to train and evaluate on ({shown} stays): "
            "every split needs stays (a larger source, or params extract.split)"
        )
    cxr_row = sel["stay_id"].map(film_row).fillna(-1).to_numpy(dtype=np.int64, copy=True)
    hours = (sel["cxr_time"] - sel["intime"]).dt.total_seconds().to_numpy(dtype=np.float64) / 3600
    cxr_time = np.where(cxr_row >= 0, np.nan_to_num(hours, nan=0.0), 0.0).astype(np.float32)
    if task.kind == "multiclass":
        y = torch.as_tensor(sel[task.labels[0]].to_numpy().astype(np.int64))
    else:
        y = torch.as_tensor(sel[list(task.labels)].to_numpy().astype(np.float32))
    values = np.asarray(ehr[keep])
    arrays = Arrays(
        ehr=torch.as_tensor(values[:, :, :n_values]),
        ehr_mask=torch.as_tensor(values[:, :, n_values:]),
        cxr=torch.as_tensor(images),
        cxr_row=torch.as_tensor(cxr_row),
        cxr_time=torch.as_tensor(cxr_time),
        y=y,
        stay_id=torch.as_tensor(sel["stay_id"].to_numpy().astype(np.int64)),
        split=sel["split"].to_numpy().astype(str),
    )
    value_index = {name: i for i, name in enumerate(meta["value_names"])}
    spec = InputSpec(
        ehr_features=n_values,
        ehr_masks=values.shape[2] - n_values,
        time_steps=values.shape[1],
        image_size=int(images.shape[1]) if images.ndim == 3 and len(images) else 0,
        # features.json names mask channel m ``<value name>_mask``
        mask_feature=tuple(value_index[m.removesuffix("_mask")] for m in meta["mask_names"]),
    )
    return arrays, spec


def drop_images(arrays: Arrays, ratio: float, splits: tuple[str, ...], seed: int) -> torch.Tensor:
    """Film rows after removing films from a seeded ``ratio`` of the stays with one, per split.

    The robustness sweep's missing-CXR ratio: in each split named, the stays that have a film are
    put in one seeded random order and the first ⌊ratio · n⌋ of the n lose it. The removal is
    nested: for a seed, the films removed at 0.4 include those removed at 0.2, so a robustness
    curve measures missingness, not which films were drawn (the same stays every epoch and for
    every model with this seed).
    """
    if not 0.0 <= ratio <= 1.0:
        raise EhrcxrError(f"missing ratio must be within [0, 1], not {ratio}")
    rows = arrays.cxr_row.clone()
    rng = np.random.default_rng(seed)
    for split in SPLITS:
        candidates = np.flatnonzero((arrays.split == split) & (rows.numpy() >= 0))
        order = rng.permutation(candidates)  # drawn for every split: each split's order is fixed
        if split in splits:
            rows[order[: int(np.floor(ratio * len(candidates)))]] = -1
    return rows


class _Collate:
    """Indices → Batch by tensor slicing."""

    def __init__(self, arrays: Arrays, cxr_row: torch.Tensor) -> None:
        self.a = arrays
        self.cxr_row = cxr_row

    def __call__(self, indices: list[int]) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        rows = self.cxr_row[idx]
        has = rows >= 0
        # A removed film takes its time with it (the sweep's missing ratio removes both).
        cxr_time = torch.where(has, self.a.cxr_time[idx], 0.0)
        if len(self.a.cxr):
            films = self.a.cxr[rows.clamp(min=0)].float().div_(255.0).unsqueeze(1)
            films[~has] = 0.0
        else:
            films = torch.zeros(len(idx), 1, 1, 1)
        return Batch(
            ehr=self.a.ehr[idx],
            ehr_mask=self.a.ehr_mask[idx],
            cxr=films,
            has_cxr=has,
            cxr_time=cxr_time,
            y=self.a.y[idx],
            stay_id=self.a.stay_id[idx],
        )


class EhrCxrDataModule(L.LightningDataModule):
    """Train/val/test loaders of one cohort and task, with the seeded missing-CXR ratio."""

    def __init__(
        self,
        paths: DataPaths,
        task: Task,
        cohort: str,
        batch_size: int,
        missing_ratio: float,
        missing_splits: tuple[str, ...],
        seed: int,
        pin_memory: bool = False,
        splits: tuple[str, ...] = SPLITS,
    ) -> None:
        super().__init__()
        # Batches are slices of in-memory tensors (the films decoded once by cache-images), so
        # loader workers would only add inter-process copies (`ehrcxr bench-train` measures the
        # input share of a step); pinned memory speeds the copy to a GPU.
        self.pin_memory = pin_memory
        self.paths, self.task, self.cohort = paths, task, cohort
        self.batch_size, self.seed = batch_size, seed
        self.missing_ratio, self.missing_splits = missing_ratio, missing_splits
        self.arrays, self.inputs = load_arrays(paths, task, cohort, splits)
        self.cxr_row = drop_images(self.arrays, missing_ratio, missing_splits, seed)
        self.collate = _Collate(self.arrays, self.cxr_row)

    def indices(self, split: str) -> list[int]:
        return np.flatnonzero(self.arrays.split == split).tolist()

    def _loader(self, split: str, shuffle: bool, drop_last: bool = False) -> DataLoader:
        idx = self.indices(split)
        if not idx:
            raise EhrcxrError(f"the {self.cohort} cohort has no {split} stays")
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            idx,
            batch_size=self.batch_size,
            shuffle=shuffle,
            collate_fn=self.collate,
            generator=generator,
            drop_last=drop_last,
            pin_memory=self.pin_memory,
        )

    def _drop_last(self, world: int) -> bool:
        # An incomplete last batch is dropped (a batch of one breaks BatchNorm1d in training),
        # unless that would leave a process without a batch (each process gets 1 / world of it).
        return len(self.indices("train")) // world > self.batch_size

    def train_batches(self, world: int = 1) -> int:
        """Training batches per epoch on each of ``world`` processes."""
        per_process = len(self.indices("train")) // world
        full, rest = divmod(per_process, self.batch_size)
        return full + (1 if rest and not self._drop_last(world) else 0)

    def train_dataloader(self) -> DataLoader:
        world = self.trainer.world_size if self.trainer is not None else 1
        return self._loader("train", shuffle=True, drop_last=self._drop_last(world))

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def predict_loader(self, split: str) -> DataLoader:
        return self._loader(split, shuffle=False)
