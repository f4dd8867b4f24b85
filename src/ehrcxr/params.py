"""The one reader of params.yaml: typed sections, unknown keys rejected loudly."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ehrcxr.data.cohort import CohortRules, Splits
from ehrcxr.data.cxr import ImageRules
from ehrcxr.data.extraction import ExtractConfig
from ehrcxr.errors import EhrcxrError

if TYPE_CHECKING:
    from ehrcxr.training import TrainConfig, WandbConfig

SOURCES = ("synthetic", "database")


def load(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise EhrcxrError(f"no params file at {path}")
    return yaml.safe_load(path.read_text()) or {}


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    """params.yaml section ``name``; a missing section is an error naming it."""
    if name not in params:
        raise EhrcxrError(f"params.yaml has no '{name}' section")
    return params[name] or {}


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise EhrcxrError(
            f"params.yaml {where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}"
        )
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class SourceParams:
    source: str
    cxr_root: str | None  # for source: database


def source_params(params: dict[str, Any]) -> SourceParams:
    source = params.get("source", "synthetic")
    if source not in SOURCES:
        raise EhrcxrError(f"params.yaml source must be one of {SOURCES}, not {source!r}")
    database = params.get("database") or {}
    return SourceParams(source=source, cxr_root=database.get("cxr_root"))


def extract_params(params: dict[str, Any]) -> ExtractConfig:
    s = dict(section(params, "extract"))
    window = int(s.pop("window_hours"))
    cohort = dict(s.pop("cohort", {}))
    if "planned_admission_types" in cohort:
        cohort["planned_admission_types"] = tuple(cohort["planned_admission_types"])
    rules = _build(CohortRules, {**cohort, "min_window_hours": window}, "extract.cohort")
    images = _build(ImageRules, {**s.pop("cxr", {}), "hours_after": window}, "extract.cxr")
    splits = _build(Splits, s.pop("split", {}), "extract.split")
    if s:
        raise EhrcxrError(f"params.yaml extract: unknown key(s) {sorted(s)}")
    return ExtractConfig(window_hours=window, rules=rules, images=images, splits=splits)


@dataclasses.dataclass(frozen=True)
class FeaturizeParams:
    max_missing_fraction: float = 0.9


def featurize_params(params: dict[str, Any]) -> FeaturizeParams:
    return _build(FeaturizeParams, section(params, "featurize"), "featurize")


@dataclasses.dataclass(frozen=True)
class CacheImagesParams:
    resize: int = 72
    crop: int = 64


def cache_images_params(params: dict[str, Any]) -> CacheImagesParams:
    return _build(CacheImagesParams, section(params, "cache_images"), "cache_images")


def train_config(params: dict[str, Any]) -> TrainConfig:
    from ehrcxr.training import TrainConfig

    s = dict(section(params, "train"))
    s["seeds"] = tuple(int(x) for x in s.get("seeds", ()))
    s["missing_splits"] = tuple(s.get("missing_splits", ()))
    return _build(TrainConfig, s, "train")


def wandb_config(params: dict[str, Any]) -> WandbConfig:
    from ehrcxr.training import WandbConfig

    return _build(WandbConfig, section(params, "wandb"), "wandb")


def model_params(params: dict[str, Any], name: str) -> dict[str, Any]:
    """The ``models.<name>`` section: the model constructor's keyword arguments."""
    models = section(params, "models")
    if name not in models:
        raise EhrcxrError(f"params.yaml has no models.{name} section")
    return dict(models[name] or {})
