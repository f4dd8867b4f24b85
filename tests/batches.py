"""Random batches for model and training-core tests (one builder for every test file)."""

from __future__ import annotations

import torch

from ehrcxr.batch import Batch, InputSpec
from ehrcxr.tasks import get_task


def random_batch(
    task_name: str = "mortality",
    b: int = 8,
    films: bool = True,
    seed: int = 0,
    *,
    inputs: InputSpec,
) -> Batch:
    """A batch with labels; every third stay lacks its film when ``films`` (all when not)."""
    g = torch.Generator().manual_seed(seed)
    task = get_task(task_name)
    has = torch.tensor([films and i % 3 != 0 for i in range(b)])
    cxr = torch.rand(b, 1, inputs.image_size, inputs.image_size, generator=g)
    cxr = cxr * has[:, None, None, None]
    if task.kind == "multiclass":
        y = torch.randint(0, task.n_outputs, (b,), generator=g)
    else:
        y = torch.randint(0, 2, (b, task.n_outputs), generator=g).float()
    return Batch(
        ehr=torch.randn(b, inputs.time_steps, inputs.ehr_features, generator=g),
        ehr_mask=torch.randint(0, 2, (b, inputs.time_steps, inputs.ehr_masks), generator=g).float(),
        cxr=cxr,
        has_cxr=has,
        cxr_time=(torch.rand(b, generator=g) * 72 - 24) * has,
        stay_id=torch.arange(b),
        y=y,
    )
