"""Each grid cell's model settings: its paper defaults, or the best of its hyperparameter search.

``data/hyperparameters/<model>-<task>-<cohort>.json`` (written by ``ehrcxr hyperparameters``
for every registered model, task and cohort; read by the ``train@``, ``robustness@`` and
``experiment`` stages through ``ehrcxr train --hyperparameters``)::

    {"model": "m3care", "task": "phenotype", "cohort": "matched",
     "source": "defaults" | "tune@m3care-phenotype-matched",
     "params": {<constructor argument>: <value>, ...}}

``params`` is the model's ``models.<model>`` section (profile applied, search space removed);
for a searched cell (params ``tune.models`` × ``tune.tasks`` × ``tune.cohorts``) the searched
dimensions are replaced by the best configuration of ``tune@<cell>`` (its ``best.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ehrcxr.errors import EhrcxrError


def cell_name(model: str, task: str, cohort: str) -> str:
    """``<model>-<task>-<cohort>``: the DVC stage id part and the file stem of a grid cell."""
    return f"{model}-{task}-{cohort}"


def read_hyperparameters(path: Path, model: str) -> dict[str, Any]:
    """The model settings of a hyperparameters file; it must be ``model``'s."""
    if not path.is_file():
        raise EhrcxrError(f"no hyperparameters file at {path} (run `ehrcxr hyperparameters`)")
    payload = json.loads(path.read_text())
    if payload.get("model") != model:
        raise EhrcxrError(f"{path} holds the settings of {payload.get('model')!r}, not {model!r}")
    return dict(payload["params"])
