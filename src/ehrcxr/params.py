"""The one reader of params.yaml: checked against a declared schema, then typed sections.

:func:`load` rejects a params file that breaks ``params_schema.yaml`` (types, ranges, choices,
missing and unknown keys; YAML syntax) with one line naming the key, the value and what is allowed,
before any stage imports anything heavy or writes anything. It imports only yaml and the standard
library: the registered models are the model modules' file names, read without importing torch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ehrcxr.data.phenotypes import phenotype_columns
from ehrcxr.errors import EhrcxrError
from ehrcxr.model_names import model_modules

if TYPE_CHECKING:
    from ehrcxr.data.augment import AugmentConfig
    from ehrcxr.data.extraction import ExtractConfig
    from ehrcxr.models.encoders import EncoderConfig
    from ehrcxr.training import TrainConfig, WandbConfig
    from ehrcxr.tuning import TuneConfig

SOURCES = ("synthetic", "database")
SCHEMA_FILE = Path(__file__).with_name("params_schema.yaml")


def load(path: str | Path = "params.yaml") -> dict[str, Any]:
    """params.yaml with the selected ``profile``'s overrides applied (see :func:`apply_profile`),
    checked against the schema as written and with the profile applied (see :func:`validate`)."""
    path = Path(path)
    if not path.is_file():
        raise EhrcxrError(f"no params file at {path}")
    raw = read_yaml(path)
    validate(raw, source=path.name)
    params = apply_profile(raw)
    if params is not raw:
        validate(params, source=f"{path.name} (profile {raw.get('profile')})")
    return params


# ---- YAML ------------------------------------------------------------------------------------


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser when built
    """yaml.safe_load's loader that refuses a key written twice in one mapping (PyYAML would keep
    the last silently; DVC's parser refuses the file)."""


def _unique_keys_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be overridden
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            twice = key in seen
        except TypeError:  # an unhashable key: construct_mapping reports it
            break
        if twice:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is written twice in this mapping", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_keys_mapping)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def read_yaml(path: Path) -> Any:
    """The file's YAML; a syntax error is one line naming the file, line and column."""
    try:
        return yaml.load(path.read_text(), Loader=_Loader)  # a safe loader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = _one_line(exc.problem or exc.context or "syntax error")
        raise EhrcxrError(f"{path}: not valid YAML{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise EhrcxrError(f"{path}: not valid YAML: {_one_line(exc)}") from None


# ---- the schema ------------------------------------------------------------------------------


@functools.cache
def schema() -> dict[str, Any]:
    """The declared schema (``params_schema.yaml``, package data)."""
    return yaml.load(SCHEMA_FILE.read_text(), Loader=_Loader)  # a safe loader


def registered_models() -> tuple[str, ...]:
    """The registry's model names, without importing it (it imports torch)."""
    return tuple(model_modules())


def _named_set(name: str, params: dict[str, Any]) -> tuple[Any, ...]:
    if name == "registered_models":
        return registered_models()
    if name == "phenotypes":
        return tuple(phenotype_columns())
    if name == "profiles":
        profiles = params.get("profiles")
        return ("default", *(profiles if isinstance(profiles, dict) else ()))
    raise EhrcxrError(f"params schema ({SCHEMA_FILE.name}): no named set {name!r}")


def _show(value: Any, limit: int = 60) -> str:
    """The value as repr, on one line, truncated."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(x: Any) -> str:
    return repr(x) if isinstance(x, float) else str(x)


def _range(node: dict[str, Any]) -> str:
    lo = ("[", node["min"]) if "min" in node else ("(", node["above"]) if "above" in node else None
    hi = ("]", node["max"]) if "max" in node else (")", node["below"]) if "below" in node else None
    if lo and hi:
        return f" in {lo[0]}{_number(lo[1])}, {_number(hi[1])}{hi[0]}"
    if lo:
        return f" {'≥' if lo[0] == '[' else '>'} {_number(lo[1])}"
    if hi:
        return f" {'≤' if hi[0] == ']' else '<'} {_number(hi[1])}"
    return ""


_NOUNS = {
    "int": ("an integer", "integers"),
    "float": ("a number", "numbers"),
    "str": ("text", "texts"),
    "bool": ("true or false", "true/false values"),
}


def _describe(node: dict[str, Any], params: dict[str, Any], plural: bool = False) -> str:
    """What ``node`` allows, in words (``plural``: as the items of a list)."""
    kind = node["type"]
    if "choices" in node or "choices_from" in node:
        if "choices_from" in node:
            choices = _named_set(node["choices_from"], params)
            head = node["choices_from"].replace("_", " ")
            text = f"{head}: {', '.join(map(str, choices))}"
            text = text if plural else f"one of the {text}"
        else:
            listed = ", ".join(_number(c) for c in node["choices"])
            text = f"values among {listed}" if plural else f"one of {listed}"
    elif kind in _NOUNS:
        text = _NOUNS[kind][plural] + _range(node)
        if node.get("non_empty"):
            text = "non-empty " + text if kind == "str" else text
    elif kind == "list":
        text = ("lists" if plural else "a list") + " of " + _describe(node["items"], params, True)
        extra = []
        if node.get("min_items"):
            extra.append(f"at least {node['min_items']}")
        if node.get("unique"):
            extra.append("no repeats")
        text += "".join(f", {e}" for e in extra)
    elif kind == "mapping":
        keys = _mapping_keys(node, params)
        text = "mappings" if plural else "a mapping"
        text += f" of {', '.join(keys)}" if keys else " with no keys: {}"
    elif kind == "search":
        text = "a mapping of the model's settings to {low, high[, prior]} or {choices: [...]}"
    elif kind == "profiles":
        text = "a mapping of profile names to partial params"
    else:
        raise EhrcxrError(f"params schema ({SCHEMA_FILE.name}): unknown type {kind!r}")
    return text + (" or null" if node.get("nullable") else "")


def _mapping_keys(node: dict[str, Any], params: dict[str, Any]) -> list[str]:
    if "keys_from" in node:
        return list(_named_set(node["keys_from"], params))
    return list(node.get("keys") or {})


def _is_type(kind: str, value: Any) -> bool:
    if isinstance(value, bool):
        return kind == "bool"
    if kind == "int":
        return isinstance(value, int)
    if kind == "float":
        return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    if kind == "str":
        return isinstance(value, str)
    return False


def _text_number_hint(kind: str, value: Any) -> str:
    """Why a number written in params.yaml came out as text, when it looks like one."""
    if kind not in ("int", "float") or not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    mantissa = value.lower().partition("e")[0]
    if "e" in value.lower() and "." not in mantissa:
        return f"; YAML reads {value} as text: write a decimal point, e.g. 1.0e-4"
    return "; it is quoted: write it without quotes"


class _Checker:
    """Walks params against the schema; the first failure raises one line."""

    def __init__(self, params: dict[str, Any], source: str) -> None:
        self.params, self.source = params, source

    def fail(self, key: str, value: Any, allowed: str) -> None:
        raise EhrcxrError(f"{self.source} {key}: {_show(value)} is not allowed ({allowed})")

    def fail_node(self, key: str, value: Any, node: dict[str, Any], hint: str = "") -> None:
        self.fail(key, value, _describe(node, self.params) + hint)

    def check(self, node: dict[str, Any], value: Any, key: str, partial: bool = False) -> None:
        """``partial``: a profile's overlay, where every key of a mapping is optional."""
        kind = node["type"]
        if value is None and node.get("nullable"):
            return
        if kind == "mapping":
            self.mapping(node, value, key, partial)
        elif kind == "list":
            self.list(node, value, key)
        elif kind == "search":  # checked by mapping(), which knows the model's settings
            raise EhrcxrError(f"params schema ({SCHEMA_FILE.name}): {key} outside a model")
        elif kind == "profiles":
            self.profiles(value, key)
        elif kind in _NOUNS:
            self.scalar(node, value, key)
        else:
            raise EhrcxrError(f"params schema ({SCHEMA_FILE.name}): unknown type {kind!r}")

    def scalar(self, node: dict[str, Any], value: Any, key: str) -> None:
        kind = node["type"]
        if not _is_type(kind, value):
            self.fail_node(key, value, node, _text_number_hint(kind, value))
        if kind == "str" and node.get("non_empty") and not value.strip():
            self.fail_node(key, value, node)
        if "choices" in node and value not in node["choices"]:
            self.fail_node(key, value, node)
        if "choices_from" in node and value not in _named_set(node["choices_from"], self.params):
            self.fail_node(key, value, node)
        if (
            ("min" in node and value < node["min"])
            or ("max" in node and value > node["max"])
            or ("above" in node and value <= node["above"])
            or ("below" in node and value >= node["below"])
        ):
            self.fail_node(key, value, node)

    def list(self, node: dict[str, Any], value: Any, key: str) -> None:
        if not isinstance(value, list) or len(value) < node.get("min_items", 0):
            self.fail_node(key, value, node)
        for i, item in enumerate(value):
            self.check(node["items"], item, f"{key}[{i}]")
        if node.get("unique"):
            for i, item in enumerate(value):
                if item in value[:i]:
                    self.fail(f"{key}[{i}]", item, f"no repeats: {_show(item)} is listed twice")

    def mapping(self, node: dict[str, Any], value: Any, key: str, partial: bool) -> None:
        if not isinstance(value, dict):
            self.fail_node(key, value, node)
        declared = node.get("keys") or {}
        allowed = _mapping_keys(node, self.params)
        prefix = f"{key}." if key else ""
        for name in value:
            if name not in allowed:
                self.unknown(f"{prefix}{name}", name, node, allowed, key)
        for name in allowed:
            if name not in declared:
                raise EhrcxrError(
                    f"params schema ({SCHEMA_FILE.name}) declares no {prefix}{name}: declare its "
                    f"keys in src/ehrcxr/{SCHEMA_FILE.name}"
                )
            child = declared[name]
            if name in value and child["type"] == "search":
                if not isinstance(value[name], dict):
                    self.fail_node(f"{prefix}{name}", value[name], child)
                if not partial:  # a profile's part of a search: checked once merged
                    settings = {k: v for k, v in declared.items() if v["type"] != "search"}
                    self.search(value[name], f"{prefix}{name}", key, settings)
            elif name in value:
                self.check(child, value[name], f"{prefix}{name}", partial)
            elif not partial and not child.get("optional"):
                raise EhrcxrError(
                    f"{self.source} {prefix}{name}: missing; expected "
                    f"{_describe(child, self.params)}"
                )

    def unknown(
        self, dotted: str, name: Any, node: dict[str, Any], allowed: list[str], parent: str
    ) -> None:
        if node.get("keys_from") == "registered_models":
            raise EhrcxrError(
                f"{self.source} {dotted}: {_show(name)} is not a registered model; registered: "
                f"{', '.join(allowed)}"
            )
        import difflib

        close = difflib.get_close_matches(str(name), allowed, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        where = parent or "the file"
        has = f"has: {', '.join(allowed)}" if allowed else "has no keys"
        raise EhrcxrError(f"{self.source} {dotted}: no such key; {hint}{where} {has}")

    def search(self, value: dict[str, Any], key: str, model: str, settings: dict[str, Any]) -> None:
        """``models.<model>.search``: each dimension over one of the model's own settings,
        as ``tuning.dimensions`` reads it; bounds and choices are valid values of the setting."""
        spec = schema()["search"]
        shape = "{low, high[, prior]} or {choices: [...]}"
        for name, dim in value.items():
            where = f"{key}.{name}"
            if name not in settings:
                self.fail(
                    where, name, f"one of {model}'s settings: {', '.join(settings) or 'none'}"
                )
            setting = settings[name]
            if not isinstance(dim, dict):
                self.fail(where, dim, shape)
            if set(dim) == {"choices"}:
                choices = dim["choices"]
                minimum = spec["min_choices"]
                if not isinstance(choices, list) or len(choices) < minimum:
                    self.fail(f"{where}.choices", choices, f"a list of at least {minimum} values")
                for i, choice in enumerate(choices):
                    self.check(setting, choice, f"{where}.choices[{i}]")
                    if choice in choices[:i]:
                        self.fail(f"{where}.choices[{i}]", choice, "no repeats")
                continue
            if not {"low", "high"} <= set(dim) <= {"low", "high", "prior"}:
                self.fail(where, dim, shape)
            if setting["type"] not in ("int", "float"):
                self.fail(where, dim, f"{{choices: [...]}}: {name} is not a number")
            self.check(setting, dim["low"], f"{where}.low")
            self.check(setting, dim["high"], f"{where}.high")
            if not dim["low"] < dim["high"]:
                self.fail(where, dim, "low < high")
            prior = dim.get("prior", "uniform")
            if prior not in spec["priors"]:
                self.fail(f"{where}.prior", prior, f"one of {', '.join(spec['priors'])}")
            if prior == "log-uniform" and not dim["low"] > 0:
                self.fail(f"{where}.low", dim["low"], "> 0 for a log-uniform prior")

    def profiles(self, value: Any, key: str) -> None:
        if not isinstance(value, dict):
            self.fail(key, value, "a mapping of profile names to partial params")
        root = schema()
        for name, overlay in value.items():
            where = f"{key}.{name}"
            if not isinstance(name, str) or name == "default":
                self.fail(where, name, "a profile name other than default")
            if overlay is None:
                continue
            if not isinstance(overlay, dict):
                self.fail(where, overlay, "a mapping of sections to override")
            _check_stage_keys(overlay, where)
            for meta in ("profile", "profiles"):
                if meta in overlay:
                    self.fail(f"{where}.{meta}", overlay[meta], "a profile cannot set it")
            self.mapping(root, overlay, where, partial=True)


def validate(params: Any, source: str = "params.yaml") -> None:
    """Check params (the whole file) against the declared schema and the checks across keys.

    Every key of the schema present (``optional`` ones aside), no other key, each value of its
    type, range and choices; ``profiles`` are partial overlays of the same schema. The first
    failure raises an :class:`EhrcxrError` of one line: ``<source> <dotted key>: <value> is not
    allowed (<what is>)``.
    """
    if params is None:
        raise EhrcxrError(f"{source}: the file is empty; expected a mapping of sections")
    if not isinstance(params, dict):
        raise EhrcxrError(f"{source}: {_show(params)} is not allowed (a mapping of sections)")
    checker = _Checker(params, source)
    checker.mapping(schema(), params, "", partial=False)
    _cross_checks(params, checker)


def _cross_checks(p: dict[str, Any], checker: _Checker) -> None:
    """What one key's range cannot say: constraints between keys (see the schema's header)."""
    split = p["extract"]["split"]
    total = split["train"] + split["val"] + split["test"]
    if not math.isclose(total, 1.0, abs_tol=1e-9):
        fractions = {k: split[k] for k in ("train", "val", "test")}
        checker.fail("extract.split", fractions, f"fractions summing to 1, not {total:g}")
    augment = p["augment"]
    if augment["scale_min"] > augment["scale_max"]:
        checker.fail(
            "augment.scale_min", augment["scale_min"], f"≤ augment.scale_max {augment['scale_max']}"
        )
    tune = p["tune"]
    if tune["n_initial_points"] > tune["n_calls"]:
        checker.fail(
            "tune.n_initial_points", tune["n_initial_points"], f"≤ tune.n_calls {tune['n_calls']}"
        )
    searched = [m for m in registered_models() if (p["models"][m] or {}).get("search")]
    for i, model in enumerate(tune["models"]):
        if model not in searched:
            checker.fail(
                f"tune.models[{i}]",
                model,
                f"a model with a search space, models.<model>.search: {', '.join(searched)}",
            )
    enc = p["encoders"]
    if enc["dim"] % enc["transformer_heads"]:
        checker.fail(
            "encoders.transformer_heads",
            enc["transformer_heads"],
            f"a divisor of encoders.dim {enc['dim']}",
        )
    if enc["resnet_weights"] == "imagenet" and enc["resnet_width"] != 64:
        checker.fail(
            "encoders.resnet_weights",
            "imagenet",
            f"none at encoders.resnet_width {enc['resnet_width']}: ImageNet weights need 64",
        )
    models = p["models"]
    utde = models.get("utde")
    if utde and utde["embed_time"] % utde["time_heads"]:
        checker.fail(
            "models.utde.time_heads",
            utde["time_heads"],
            f"a divisor of models.utde.embed_time {utde['embed_time']}",
        )
    moe = models.get("flex_moe")
    if moe and moe["top_k"] > moe["n_experts"]:
        checker.fail(
            "models.flex_moe.top_k", moe["top_k"], f"≤ models.flex_moe.n_experts {moe['n_experts']}"
        )


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
