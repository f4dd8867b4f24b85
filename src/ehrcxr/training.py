"""One LightningModule that trains any registered model on any task, and the run around it.

Losses: BCE-with-logits for mortality and the 25 phenotypes, cross-entropy for length of stay;
AdamW; early stopping and best-checkpoint selection on the validation selection metric. Models
return logits; this module turns them into probabilities (sigmoid or softmax) everywhere.

A model may own part of its training (duck-typed hooks, see :class:`ehrcxr.batch.TrainContext`):
its loss (``training_loss``), its parameter groups or optimisers, a fully manual step
(``manual_training_step``: this module then switches Lightning to manual optimisation), a
``prepare`` pass over the unshuffled training split before fitting, and an end-of-epoch hook.
``forward`` never sees labels: every call passes ``batch.without_labels()``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch import nn
from torch.nn import functional as F

from ehrcxr.batch import Batch, TrainContext
from ehrcxr.data.augment import AugmentConfig, augment_films
from ehrcxr.data.datamodule import SPLITS, DataPaths, EhrCxrDataModule
from ehrcxr.evaluation.metrics import selection_value
from ehrcxr.models import create_model, model_modalities
from ehrcxr.models.encoders import EncoderConfig
from ehrcxr.tasks import Task

MONITOR = "val/selection"


def task_loss(task: Task, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if task.kind == "multiclass":
        return F.cross_entropy(logits, y)
    return F.binary_cross_entropy_with_logits(logits, y)


def probabilities(task: Task, logits: torch.Tensor) -> torch.Tensor:
    """[B, C] logits → [B, C] probabilities (softmax over classes for LoS)."""
    return logits.softmax(dim=-1) if task.kind == "multiclass" else logits.sigmoid()


def default_training_loss(model: nn.Module, batch: Batch, ctx: TrainContext) -> torch.Tensor:
    """Task loss of the model's logits, plus its label-free auxiliary loss if it has one."""
    out = model(batch.without_labels())
    loss = ctx.loss_fn(out.logits, batch.y)
    return loss if out.aux_loss is None else loss + out.aux_loss


def gather_unique(
    module: L.LightningModule, stay_id: torch.Tensor, *values: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Concatenate per-process rows over all processes and drop the duplicates a distributed
    sampler pads with (by stay id, first occurrence). One process: the rows as they are."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return (stay_id, *values)
    gathered = [module.all_gather(t) for t in (stay_id, *values)]  # [W, N, …]
    flat = [g.reshape(-1, *g.shape[2:]) for g in gathered]
    ids = flat[0].cpu().numpy()
    _, first = np.unique(ids, return_index=True)
    keep = torch.as_tensor(np.sort(first), device=flat[0].device)
    return tuple(f[keep] for f in flat)


class TrainModule(L.LightningModule):
    """Wraps a plain ``nn.Module`` (Batch → ModelOutput) with the task's loss and metrics."""

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        lr: float,
        weight_decay: float,
        augment: AugmentConfig,
        prepare_loader: Any = None,
    ) -> None:
        super().__init__()
        self.model, self.task = model, task
        self.lr, self.weight_decay = lr, weight_decay
        self.augment = augment
        self.prepare_loader = prepare_loader  # unshuffled training split, for model.prepare
        # A model that never reads the film (an EHR model) gets no film augmentation: it would
        # only cost time (a model outside the registry is assumed to read it).
        name = getattr(model, "registry_name", None)
        self.reads_films = name is None or "cxr" in model_modalities(name)
        self.automatic_optimization = not hasattr(model, "manual_training_step")
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    # ---- batches -------------------------------------------------------------------------------
    def transfer_batch_to_device(
        self, batch: Batch, device: torch.device, dataloader_idx: int
    ) -> Batch:
        return batch.to(device)

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        if self.trainer is not None and self.trainer.training and self.reads_films:
            return dataclasses.replace(
                batch, cxr=augment_films(batch.cxr, batch.has_cxr, self.augment)
            )
        return batch

    def context(self) -> TrainContext:
        trainer = self.trainer
        optimizers = [] if self.automatic_optimization else list(_as_list(self.optimizers()))
        return TrainContext(
            task=self.task,
            loss_fn=lambda logits, y: task_loss(self.task, logits, y),
            epoch=self.current_epoch,
            max_epochs=int(trainer.max_epochs) if trainer and trainer.max_epochs else 0,
            step=int(self.global_step),
            log=self._log_scalar,
            optimizers=optimizers,
            backward=self.manual_backward,
        )

    def _log_scalar(self, name: str, value: torch.Tensor | float) -> None:
        self.log(name, value, on_step=False, on_epoch=True, sync_dist=True)

    def _log_epoch_loss(self, name: str, loss: torch.Tensor, batch: Batch) -> None:
        """The epoch mean of a loss, weighted by batch size and averaged over processes."""
        self.log(name, loss, on_step=False, on_epoch=True, batch_size=len(batch), sync_dist=True)

    # ---- fitting -------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        device = self.device
        pretrain = getattr(self.model, "pretrain", None)
        if pretrain is not None and self.prepare_loader is not None:
            with torch.enable_grad():
                pretrain([batch.to(device) for batch in self.prepare_loader], self.context())
        prepare = getattr(self.model, "prepare", None)
        if prepare is not None and self.prepare_loader is not None:
            with torch.no_grad():
                prepare(batch.to(device) for batch in self.prepare_loader)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        ctx = self.context()
        if not self.automatic_optimization:
            loss = self.model.manual_training_step(batch, ctx)
            self._log_epoch_loss("train/loss", loss.detach(), batch)
            return None
        own = getattr(self.model, "training_loss", None)
        loss = own(batch, ctx) if own is not None else default_training_loss(self.model, batch, ctx)
        self._log_epoch_loss("train/loss", loss, batch)
        return loss

    def on_train_epoch_end(self) -> None:
        hook = getattr(self.model, "on_train_epoch_end", None)
        if hook is not None:
            hook(self.context())

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        logits = self.model(batch.without_labels()).logits
        self._log_epoch_loss("val/loss", task_loss(self.task, logits, batch.y), batch)
        self._val.append(
            (batch.stay_id.detach(), probabilities(self.task, logits).detach(), batch.y.detach())
        )

    def on_validation_epoch_end(self) -> None:
        stay = torch.cat([v[0] for v in self._val])
        p = torch.cat([v[1] for v in self._val])
        y = torch.cat([v[2] for v in self._val])
        self._val.clear()
        # Under DDP each process holds a shard (padded by the sampler): the metric is computed on
        # the gathered, de-duplicated validation set, the same value on every process.
        _, p, y = gather_unique(self, stay, p, y)
        value = selection_value(self.task.kind, y.cpu().numpy(), p.float().cpu().numpy())
        self.log(
            MONITOR, float(np.nan_to_num(value, nan=0.0)), sync_dist=False, rank_zero_only=False
        )

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return {
            "stay_id": batch.stay_id,
            "p": probabilities(self.task, self.model(batch.without_labels()).logits),
            "y": batch.y,
        }

    def configure_optimizers(self) -> torch.optim.Optimizer | list[torch.optim.Optimizer]:
        own = getattr(self.model, "configure_optimizers", None)
        if own is not None:
            return own(self.lr, self.weight_decay)
        groups = getattr(self.model, "optimizer_groups", None)
        params = (
            groups(self.lr, self.weight_decay) if groups is not None else self.model.parameters()
        )
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)


def _as_list(x: Any) -> list:
    return x if isinstance(x, list | tuple) else [x]


class CurveRecorder(Callback):
    """Per-epoch train loss, validation loss and selection metric (aggregates only)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Runs after the epoch's validation, when both losses and the metric are logged.
        m = trainer.callback_metrics
        self.rows.append(
            {
                "epoch": trainer.current_epoch,
                "train_loss": float(m.get("train/loss", float("nan"))),
                "val_loss": float(m.get("val/loss", float("nan"))),
                "val_selection": float(m.get(MONITOR, float("nan"))),
            }
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """params.yaml ``train`` (+ the run's model, task, cohort, seed)."""

    max_epochs: int
    max_batches: int  # training batches at most, in whole epochs (-1: no limit); see epochs()
    min_epochs: int
    patience: int
    batch_size: int
    lr: float
    weight_decay: float
    seeds: tuple[int, ...]
    missing_ratio: float
    missing_splits: tuple[str, ...]
    accelerator: str
    devices: int
    strategy: str
    threads: int
    precision: str  # Lightning's: 32-true | 16-mixed | bf16-mixed (mixed precision on a GPU)


def intra_op_threads(requested: int) -> int:
    """``train.threads``, capped at the CPUs this process may run on (its affinity mask).

    More intra-op threads than CPUs make OpenMP's spinning workers steal each other's time
    slices: two concurrent 2-thread runs on 2 cores took 437 s each, two 1-thread runs 50 s
    (late fusion, planted source, 16 epochs). A process pinned to fewer CPUs (``taskset``, the
    test suite's workers) therefore gets fewer threads.
    """
    return max(1, min(requested, len(os.sched_getaffinity(0))))


def epochs(cfg: TrainConfig, batches_per_epoch: int) -> int:
    """The run's epoch limit: ``max_epochs``, and with a batch budget (``max_batches`` ≥ 0) the
    whole epochs that reach it, ⌈max_batches / batches per epoch⌉ (at least one).

    The default profile gives both cohorts the same budget of optimizer passes, so a base-cohort
    run (≈ 3.6× the stays of the matched subset) costs about what a matched one does instead of
    3.6× as much. Counted in batches, not optimizer steps: AUG steps twice per batch.
    """
    if cfg.max_batches < 0:
        return cfg.max_epochs
    return max(1, min(cfg.max_epochs, -(-cfg.max_batches // max(1, batches_per_epoch))))


@dataclasses.dataclass(frozen=True)
class WandbConfig:
    mode: str  # offline | online | disabled (WANDB_MODE in the environment wins)
    project: str
    dir: str


def wandb_mode(wandb_cfg: WandbConfig) -> str:
    """offline | online | disabled: ``WANDB_MODE`` in the environment wins over params."""
    return os.environ.get("WANDB_MODE", wandb_cfg.mode)


def wandb_settings(silent: bool = False) -> Any:
    """Curves, config and summaries only: no system-metrics sampler, no console capture, no
    environment snapshot (pip freeze, git) — they cost seconds per run and are not benchmark
    data. ``silent``: no W&B banner per run (a search makes one run per call)."""
    import wandb

    return wandb.Settings(
        silent=silent,
        console="off",
        x_disable_stats=True,
        x_disable_meta=True,
        x_save_requirements=False,
        disable_git=True,
        disable_code=True,
    )


def _logger(wandb_cfg: WandbConfig | None, run_name: str, group: str, config: dict[str, Any]):
    mode = "disabled" if wandb_cfg is None else wandb_mode(wandb_cfg)
    if mode == "disabled":
        return False
    from lightning.pytorch.loggers import WandbLogger

    Path(wandb_cfg.dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=wandb_cfg.project,
        name=run_name,
        group=group,
        save_dir=wandb_cfg.dir,
        offline=(mode == "offline"),
        config=config,
        log_model=False,
        settings=wandb_settings(),
    )


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What one training run is: model and its settings, task, cohort, data."""

    model_name: str
    model_params: dict[str, Any]
    encoders: EncoderConfig
    task: Task
    cohort: str
    paths: DataPaths
    train: TrainConfig
    augment: AugmentConfig


def build_run(
    spec: RunSpec, seed: int, splits: tuple[str, ...] = SPLITS
) -> tuple[EhrCxrDataModule, TrainModule]:
    """The data (the stays of ``splits``) and the LightningModule of one run of ``spec`` with
    ``seed`` (global RNGs seeded, torch's thread count set): what ``ehrcxr train`` fits,
    ``ehrcxr tune`` fits without the test split, and ``bench-train`` times."""
    cfg = spec.train
    L.seed_everything(seed, workers=True, verbose=False)
    torch.set_num_threads(intra_op_threads(cfg.threads))
    data = EhrCxrDataModule(
        spec.paths,
        spec.task,
        spec.cohort,
        cfg.batch_size,
        cfg.missing_ratio,
        cfg.missing_splits,
        seed,
        pin_memory=cfg.accelerator == "gpu",
        splits=splits,
    )
    model = create_model(
        spec.model_name, data.inputs, spec.task.n_outputs, spec.encoders, spec.model_params
    )
    module = TrainModule(
        model,
        spec.task,
        cfg.lr,
        cfg.weight_decay,
        spec.augment,
        prepare_loader=(
            data.predict_loader("train")
            if hasattr(model, "prepare") or hasattr(model, "pretrain")
            else None
        ),
    )
    return data, module


def train_one(
    spec: RunSpec,
    seed: int,
    wandb_cfg: WandbConfig | None,
    checkpoint_dir: Path,
    fast_dev_run: bool = False,
    predict_splits: tuple[str, ...] = ("val", "test"),
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Train with one seed; return (predictions on ``predict_splits``, learning curve).

    Only the stays of train, val and ``predict_splits`` are loaded: a search's trials
    (``predict_splits=("val",)``) never hold a test stay. ``wandb_cfg`` None: no W&B run (a
    search logs one run per trial itself). Under multi-process data parallelism every process
    trains; only rank 0 predicts and returns, the others return None.
    """
    cfg = spec.train
    splits = tuple(s for s in SPLITS if s in ("train", "val", *predict_splits))
    data, module = build_run(spec, seed, splits)
    run_name = f"{spec.model_name}-{spec.task.name}-{spec.cohort}-seed{seed}"
    logger = _logger(
        wandb_cfg,
        run_name,
        f"{spec.model_name}-{spec.task.name}-{spec.cohort}",
        {
            "model": spec.model_name,
            "task": spec.task.name,
            "cohort": spec.cohort,
            "seed": seed,
            "params": spec.model_params,
            "encoders": dataclasses.asdict(spec.encoders),
            "train": dataclasses.asdict(cfg),
            "augment": dataclasses.asdict(spec.augment),
        },
    )
    max_epochs = epochs(cfg, data.train_batches(cfg.devices))
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename=f"seed{seed}",
        monitor=MONITOR,
        mode="max",
        save_top_k=1,
        save_weights_only=True,  # the best weights, not the optimiser state (a third the size)
        enable_version_counter=False,
    )
    curves = CurveRecorder()
    trainer = L.Trainer(
        max_epochs=max_epochs,
        min_epochs=min(cfg.min_epochs, max_epochs),
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        # Under DDP, parameters a step does not use (a boosting classifier not yet active, a
        # projection of films when a batch has none) must not stall the gradient reduction.
        strategy="ddp_find_unused_parameters_true" if cfg.strategy == "ddp" else cfg.strategy,
        deterministic=True,
        precision=cfg.precision,
        logger=logger,
        callbacks=[EarlyStopping(MONITOR, mode="max", patience=cfg.patience), checkpoint, curves],
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(checkpoint_dir),
        fast_dev_run=fast_dev_run,
    )
    try:
        trainer.fit(module, datamodule=data)
    finally:
        if logger:
            import wandb

            wandb.finish()
    if trainer.global_rank != 0:
        return None
    if checkpoint.best_model_path:  # fast_dev_run saves no checkpoint: predict with last weights
        best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)
        module.load_state_dict(best["state_dict"])  # strict: parameters exist from __init__ on
    # Lightning moves the module back to the CPU after fit; predict on the training device.
    predictions = predict(module, data, seed, trainer.strategy.root_device, predict_splits)
    return predictions, pd.DataFrame(curves.rows).assign(seed=seed)


@torch.no_grad()
def predict(
    module: TrainModule,
    data: EhrCxrDataModule,
    seed: int,
    device: torch.device | str = "cpu",
    splits: tuple[str, ...] = ("val", "test"),
) -> pd.DataFrame:
    """Probabilities of the stays of ``splits`` on one process (no sampler padding)."""
    module.to(device).eval()
    frames = []
    task = module.task
    for split in splits:
        parts = [
            {k: v.cpu() for k, v in module.predict_step(batch.to(device), i).items()}
            for i, batch in enumerate(data.predict_loader(split))
        ]
        p = torch.cat([x["p"] for x in parts]).float().numpy()
        y = torch.cat([x["y"] for x in parts]).numpy()
        frame = pd.DataFrame(
            {
                "stay_id": torch.cat([x["stay_id"] for x in parts]).numpy(),
                "split": split,
                "seed": seed,
            }
        )
        frames.append(pd.concat([frame, prediction_columns(task, p, y)], axis=1))
    return pd.concat(frames, ignore_index=True)


def prediction_columns(task: Task, p: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    """``prob_<output>`` and ``label_<label>`` columns (see the predictions file contract)."""
    probs = dict(zip(task.prob_columns, p.T, strict=True))
    y = y.reshape(len(y), -1).astype(np.int64)  # LoS: class ids [N] → [N, 1]
    labels = dict(zip(task.label_columns, y.T, strict=True))
    return pd.DataFrame({**probs, **labels})
