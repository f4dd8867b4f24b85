"""Plain ``nn.Module`` models, one file each, registered by name (see registry.py).

Every model maps a :class:`ehrcxr.batch.Batch` to :class:`ehrcxr.batch.ModelOutput` (logits,
optional auxiliary loss); the training module turns logits into probabilities.
"""

from ehrcxr.models.registry import (
    create_model,
    get_model_class,
    is_multimodal,
    list_models,
    model_modalities,
    register_model,
)

__all__ = [
    "create_model",
    "get_model_class",
    "is_multimodal",
    "list_models",
    "model_modalities",
    "register_model",
]
