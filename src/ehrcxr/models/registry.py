"""Models by name: ``@register_model("lstm")``, ``create_model(name, …)``, ``list_models()``.

The registry name is the file name, the params.yaml section (``models.<name>``) and the DVC stage
id part. Constructors take explicit, typed arguments; an unknown params key is a TypeError.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from torch import nn

from ehrcxr.batch import InputSpec
from ehrcxr.errors import EhrcxrError

_REGISTRY: dict[str, type[nn.Module]] = {}


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = cls
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


def create_model(name: str, inputs: InputSpec, n_outputs: int, params: dict[str, Any]) -> nn.Module:
    """Build ``name`` with its params.yaml section; unknown keys fail loudly."""
    cls = get_model_class(name)
    try:
        return cls(inputs=inputs, n_outputs=n_outputs, **params)
    except TypeError as exc:
        raise EhrcxrError(f"models.{name} in params.yaml: {exc}") from None
