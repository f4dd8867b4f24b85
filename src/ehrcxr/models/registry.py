"""Models by name: ``@register_model("lstm", ("ehr",))``, ``create_model``, ``list_models()``.

The registry name is the file name, the params.yaml section (``models.<name>``) and the DVC stage
id part. Constructors take explicit, typed arguments; an unknown params key is a TypeError.
Each model declares the modalities it reads (``ehr``, ``cxr``): the evaluation compares every
multimodal model with the best unimodal one.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from torch import nn

from ehrcxr.batch import InputSpec
from ehrcxr.errors import EhrcxrError

MODALITIES = ("ehr", "cxr")
_REGISTRY: dict[str, type[nn.Module]] = {}
_MODALITIES: dict[str, tuple[str, ...]] = {}


def register_model(
    name: str, modalities: tuple[str, ...]
) -> Callable[[type[nn.Module]], type[nn.Module]]:
    if not modalities or set(modalities) - set(MODALITIES):
        raise ValueError(f"model {name!r}: modalities must be a non-empty subset of {MODALITIES}")

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = cls
        _MODALITIES[name] = tuple(m for m in MODALITIES if m in modalities)
        cls.registry_name = name
        return cls

    return wrap


def _load_all() -> None:
    import ehrcxr.models as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("registry", "encoders"):
            importlib.import_module(f"ehrcxr.models.{info.name}")


def list_models() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type[nn.Module]:
    _load_all()
    if name not in _REGISTRY:
        raise EhrcxrError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def model_modalities(name: str) -> tuple[str, ...]:
    """The modalities ``name`` reads, in the order of ``MODALITIES``."""
    get_model_class(name)
    return _MODALITIES[name]


def is_multimodal(name: str) -> bool:
    return len(model_modalities(name)) > 1


def create_model(name: str, inputs: InputSpec, n_outputs: int, params: dict[str, Any]) -> nn.Module:
    """Build ``name`` with its params.yaml section; unknown keys fail loudly."""
    cls = get_model_class(name)
    try:
        return cls(inputs=inputs, n_outputs=n_outputs, **params)
    except TypeError as exc:
        raise EhrcxrError(f"models.{name} in params.yaml: {exc}") from None
