"""Plain ``nn.Module`` models, one file each, registered by name (see registry.py).

Every model maps a :class:`ehrcxr.batch.Batch` (without labels) to
:class:`ehrcxr.batch.ModelOutput` (logits, optional label-free auxiliary loss); the training
module turns logits into probabilities. A model may own part of its training through the
duck-typed hooks listed in :class:`ehrcxr.batch.TrainContext`.
"""

from ehrcxr.models.registry import (
    broken_models,
    create_model,
    get_model_class,
    is_multimodal,
    list_models,
    model_modalities,
    model_paradigm,
    register_model,
)

__all__ = [
    "broken_models",
    "create_model",
    "get_model_class",
    "is_multimodal",
    "list_models",
    "model_modalities",
    "model_paradigm",
    "register_model",
]
