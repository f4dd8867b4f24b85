"""The registered models' names without importing them (the model package imports torch).

The registry name of a model is its module's file name under ``src/ehrcxr/models/``
(models/registry.py); ``params.load`` checks ``model``, the grid's lists and the ``models``
sections against these names with the standard library alone.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Iterable
from pathlib import Path

MODELS_DIR = Path(__file__).with_name("models")
NOT_MODELS = ("registry", "encoders")  # modules of the model package that hold no model


def model_modules(search_path: Iterable[str] = (str(MODELS_DIR),)) -> list[str]:
    """Names of the model modules (= registry names) found on ``search_path`` (the model
    package's ``__path__``; this folder by default), sorted; nothing is imported."""
    return sorted(
        info.name for info in pkgutil.iter_modules(list(search_path)) if info.name not in NOT_MODELS
    )
