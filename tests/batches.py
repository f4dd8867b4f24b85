"""Random batches for model and training-core tests (one builder for every test file)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ehrcxr.batch import Batch, InputSpec, TrainContext
from ehrcxr.tasks import get_task
from ehrcxr.training import task_loss


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


def train_context(
    task_name: str = "mortality",
    *,
    epoch: int = 0,
    max_epochs: int = 1,
    optimizers: list[torch.optim.Optimizer] | None = None,
    logged: dict[str, list[float]] | None = None,
    backward: Callable[[torch.Tensor], None] | None = None,
) -> TrainContext:
    """A ``TrainContext`` as the training core builds it, outside Lightning: the task's own loss,
    ``loss.backward()`` as the backward unless given, every ``log(name, value)`` appended to
    ``logged[name]``."""
    task = get_task(task_name)
    sink = {} if logged is None else logged
    return TrainContext(
        task=task,
        loss_fn=lambda logits, y: task_loss(task, logits, y),
        epoch=epoch,
        max_epochs=max_epochs,
        step=0,
        log=lambda name, value: sink.setdefault(name, []).append(float(value)),
        optimizers=list(optimizers or []),
        backward=backward if backward is not None else (lambda loss: loss.backward()),
    )
