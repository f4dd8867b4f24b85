"""The one reader of params.yaml: typed sections, unknown keys rejected loudly."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ehrcxr.errors import EhrcxrError

if TYPE_CHECKING:
    from ehrcxr.data.augment import AugmentConfig
    from ehrcxr.data.extraction import ExtractConfig
    from ehrcxr.models.encoders import EncoderConfig
    from ehrcxr.training import TrainConfig, WandbConfig
    from ehrcxr.tuning import TuneConfig

SOURCES = ("synthetic", "database")


def load(path: str | Path = "params.yaml") -> dict[str, Any]:
    """params.yaml with the selected ``profile``'s overrides applied (see :func:`apply_profile`)."""
    path = Path(path)
    if not path.is_file():
        raise EhrcxrError(f"no params file at {path}")
    return apply_profile(yaml.safe_load(path.read_text()) or {})


def _merge(base: dict[str, Any], over: dict[str, Any], where: str) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if key not in base:
            raise EhrcxrError(f"params.yaml {where}.{key}: no such key in the base params")
        out[key] = _merge(base[key], value, f"{where}.{key}") if isinstance(value, dict) else value
    return out


# Keys dvc.yaml interpolates (``${grid.models}``, …): DVC reads them from params.yaml as written,
# before any profile, so a profile overriding one would make the code expect stages that do not
# exist. Which stages exist is set on these keys themselves (``dvc exp run -S 'tune.models=…'``).
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "model": (),
    "task": (),
    "cohort": (),
    "grid": ("models", "tasks", "cohorts"),
    "robustness": ("models", "tasks", "cohort", "ratios"),
    "tune": ("models", "tasks", "cohorts"),
}


def _check_stage_keys(override: dict[str, Any], where: str) -> None:
    for name, keys in STAGE_KEYS.items():
        if name not in override:
            continue
        value = override[name]
        bad = [name] if not keys else [f"{name}.{k}" for k in keys if k in (value or {})]
        if bad:
            raise EhrcxrError(
                f"params.yaml {where} overrides {', '.join(bad)}: dvc.yaml reads it before any "
                "profile applies; set it in the base params (dvc exp run -S …)"
            )


def apply_profile(params: dict[str, Any]) -> dict[str, Any]:
    """``profile: <name>`` overlays ``profiles.<name>`` on the base sections (``default``: none).

    One key switches the whole benchmark, e.g. ``dvc exp run -S profile=paper``; an override of
    a key the base params do not have is an error, so a profile cannot drift from the base.
    """
    name = params.get("profile", "default")
    profiles = params.get("profiles") or {}
    for other, override in profiles.items():
        _check_stage_keys(override or {}, f"profiles.{other}")
    if name == "default":
        return params
    if name not in profiles:
        raise EhrcxrError(
            f"params.yaml profile {name!r} is not defined; profiles: default, {', '.join(profiles)}"
        )
    return _merge(params, profiles[name] or {}, f"profiles.{name}")


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
    from ehrcxr.data.cohort import CohortRules, Splits
    from ehrcxr.data.cxr import ImageRules
    from ehrcxr.data.extraction import ExtractConfig

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


def tune_config(params: dict[str, Any]) -> TuneConfig:
    from ehrcxr.tuning import TuneConfig

    s = dict(section(params, "tune"))
    for key in ("models", "tasks", "cohorts"):
        s[key] = tuple(s.get(key) or ())
    s["seeds"] = tuple(int(x) for x in s.get("seeds") or ())
    return _build(TuneConfig, s, "tune")


SEARCH_KEY = "search"  # models.<name>.search: the model's search space (data, not an argument)


def model_params(params: dict[str, Any], name: str) -> dict[str, Any]:
    """The ``models.<name>`` section without its search space: the model's own constructor
    arguments (its paper's defaults)."""
    models = section(params, "models")
    if name not in models:
        raise EhrcxrError(f"params.yaml has no models.{name} section")
    return {k: v for k, v in (models[name] or {}).items() if k != SEARCH_KEY}


def search_space(params: dict[str, Any], name: str) -> dict[str, Any]:
    """``models.<name>.search``: dimension → {low, high[, prior]} or {choices}; empty: not tuned."""
    models = section(params, "models")
    return dict((models.get(name) or {}).get(SEARCH_KEY) or {})


def encoder_config(params: dict[str, Any]) -> EncoderConfig:
    """params.yaml ``encoders``: the encoder settings every model shares."""
    from ehrcxr.models.encoders import EncoderConfig

    return _build(EncoderConfig, section(params, "encoders"), "encoders")


def augment_config(params: dict[str, Any]) -> AugmentConfig:
    """params.yaml ``augment``: training-film augmentation."""
    from ehrcxr.data.augment import AugmentConfig

    try:
        return _build(AugmentConfig, section(params, "augment"), "augment")
    except ValueError as exc:
        raise EhrcxrError(f"params.yaml {exc}") from None
