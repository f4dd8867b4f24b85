"""Models by name: ``@register_model("lstm", ("ehr",))``, ``create_model``, ``list_models()``.

The registry name is the module's file name, the params.yaml section (``models.<name>``) and
the DVC stage id part, so a train stage imports exactly one model module (``get_model_class``)
and lists exactly that file among its dependencies. Constructors take explicit, typed
arguments: ``inputs``, ``n_outputs``, ``encoders`` (the shared settings, params.yaml
``encoders``) and the model's own keys. Each model declares the modalities it reads (``ehr``,
``cxr``): the evaluation compares every multimodal model with the best unimodal one. A
multimodal model also declares whether it handles a stay without a film by its own mechanism
(``missing_modality=True``: the CareBench paper's missing-modality methods) or is a
complete-modality model given the placeholder (zero imputation); :func:`model_paradigm` names the
three groups of the paper's tables.
"""

from __future__ import annotations

import importlib
import inspect
import traceback
from collections.abc import Callable
from typing import Any

from torch import nn

from ehrcxr import model_names
from ehrcxr.batch import InputSpec
from ehrcxr.errors import EhrcxrError
from ehrcxr.models.encoders import EncoderConfig

MODALITIES = ("ehr", "cxr")
PARADIGMS = ("unimodal", "complete-modality", "missing-modality")  # CareBench paper, appendix C
_REGISTRY: dict[str, type[nn.Module]] = {}
_MODALITIES: dict[str, tuple[str, ...]] = {}
_PARADIGM: dict[str, str] = {}
_BROKEN: dict[str, str] = {}  # module name → the last line of its import error


def register_model(
    name: str, modalities: tuple[str, ...], missing_modality: bool = False
) -> Callable[[type[nn.Module]], type[nn.Module]]:
    if not modalities or set(modalities) - set(MODALITIES):
        raise ValueError(f"model {name!r}: modalities must be a non-empty subset of {MODALITIES}")
    if missing_modality and len(modalities) < 2:
        raise ValueError(f"model {name!r}: only a multimodal model can be a missing-modality one")
    if len(modalities) < 2:
        paradigm = "unimodal"
    else:
        paradigm = "missing-modality" if missing_modality else "complete-modality"

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = cls
        _MODALITIES[name] = tuple(m for m in MODALITIES if m in modalities)
        _PARADIGM[name] = paradigm
        cls.registry_name = name
        return cls

    return wrap


def model_modules() -> list[str]:
    """Names of the package's model modules (= registry names)."""
    import ehrcxr.models as package

    return model_names.model_modules(package.__path__)


def _import(name: str) -> bool:
    """Import ``ehrcxr.models.<name>``; a failure is recorded by name, never raised."""
    if name in _REGISTRY:
        return True
    if name in _BROKEN:
        return False
    try:
        importlib.import_module(f"ehrcxr.models.{name}")
    except Exception as exc:  # a broken model module must not take the others down
        last = traceback.format_exception_only(exc)[-1].strip()
        _BROKEN[name] = last
        return False
    return True


def list_models() -> list[str]:
    """Every model that imports; see :func:`broken_models` for those that do not."""
    for name in model_modules():
        _import(name)
    return sorted(_REGISTRY)


def broken_models() -> dict[str, str]:
    """Model modules that failed to import: name → the error's last line."""
    list_models()
    return dict(_BROKEN)


def get_model_class(name: str) -> type[nn.Module]:
    """The class registered as ``name``, importing only its own module."""
    if name in model_modules():
        _import(name)
    if name in _BROKEN:
        raise EhrcxrError(f"model {name!r} failed to import: {_BROKEN[name]}")
    if name not in _REGISTRY:
        raise EhrcxrError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return _REGISTRY[name]


def model_modalities(name: str) -> tuple[str, ...]:
    """The modalities ``name`` reads, in the order of ``MODALITIES``."""
    get_model_class(name)
    return _MODALITIES[name]


def model_paradigm(name: str) -> str:
    """``unimodal``, ``complete-modality`` or ``missing-modality`` (one of ``PARADIGMS``)."""
    get_model_class(name)
    return _PARADIGM[name]


def is_multimodal(name: str) -> bool:
    return len(model_modalities(name)) > 1


def model_arguments(name: str) -> dict[str, inspect.Parameter]:
    """The model's own constructor arguments (its params.yaml keys)."""
    signature = inspect.signature(get_model_class(name).__init__)
    shared = {"self", "inputs", "n_outputs", "encoders"}
    return {k: v for k, v in signature.parameters.items() if k not in shared}


def check_model_params(name: str, params: dict[str, Any]) -> None:
    """Unknown or missing keys of ``models.<name>`` fail here, before any construction."""
    arguments = model_arguments(name)
    unknown = sorted(set(params) - set(arguments))
    if unknown:
        raise EhrcxrError(
            f"params.yaml models.{name}: unknown key(s) {unknown}; known: {sorted(arguments)}"
        )
    missing = sorted(
        k for k, p in arguments.items() if p.default is inspect.Parameter.empty and k not in params
    )
    if missing:
        raise EhrcxrError(f"params.yaml models.{name}: missing key(s) {missing}")


def create_model(
    name: str,
    inputs: InputSpec,
    n_outputs: int,
    encoders: EncoderConfig,
    params: dict[str, Any],
) -> nn.Module:
    """Build ``name`` with the shared encoder settings and its params.yaml section.

    Keys are checked against the constructor first, so an error raised inside the
    constructor is the model's own, not reported as a params error.
    """
    cls = get_model_class(name)
    check_model_params(name, params)
    return cls(inputs=inputs, n_outputs=n_outputs, encoders=encoders, **params)
