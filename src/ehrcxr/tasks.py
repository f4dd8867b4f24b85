"""The three prediction tasks as data: label columns, output size, loss kind, selection metric."""

from __future__ import annotations

import dataclasses

from ehrcxr.data.phenotypes import phenotype_columns
from ehrcxr.errors import EhrcxrError


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    kind: str  # binary | multilabel | multiclass
    labels: tuple[str, ...]  # cohort columns holding the label(s)
    n_outputs: int
    selection_metric: str  # the validation metric that picks the checkpoint (higher is better)

    @property
    def prob_columns(self) -> list[str]:
        """Predictions-file probability columns, in output order: ``prob_<label>`` (one per
        label) or, for a multi-class task, ``prob_0 … prob_<K-1>``."""
        if self.kind == "multiclass":
            return [f"prob_{k}" for k in range(self.n_outputs)]
        return [f"prob_{n}" for n in self.labels]

    @property
    def label_columns(self) -> list[str]:
        """Predictions-file label columns: ``label_<label>`` (one, the class id, for LoS)."""
        return [f"label_{n}" for n in self.labels]


def get_task(name: str) -> Task:
    """``mortality`` (binary), ``phenotype`` (25 labels), ``los`` (7 classes)."""
    if name == "mortality":
        return Task("mortality", "binary", ("mortality",), 1, "auprc")
    if name == "phenotype":
        cols = tuple(phenotype_columns())
        return Task("phenotype", "multilabel", cols, len(cols), "macro_auprc")
    if name == "los":
        return Task("los", "multiclass", ("los_class",), 7, "accuracy")
    raise EhrcxrError(f"unknown task {name!r} (mortality, phenotype, los)")


TASKS = ("mortality", "phenotype", "los")
COHORTS = ("matched", "base")  # the base ICU cohort and its subset with a matched film
