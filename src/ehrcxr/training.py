"""One LightningModule that trains any registered model on any task, and the run around it.

Losses: BCE-with-logits for mortality and the 25 phenotypes, cross-entropy for length of stay;
AdamW; early stopping and best-checkpoint selection on the validation selection metric. Models
return logits; this module turns them into probabilities (sigmoid or softmax) everywhere.
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

from ehrcxr.batch import Batch
from ehrcxr.data.datamodule import DataPaths, EhrCxrDataModule
from ehrcxr.evaluation.metrics import selection_value
from ehrcxr.models import create_model
from ehrcxr.tasks import Task

MONITOR = "val/selection"


def task_loss(task: Task, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if task.kind == "multiclass":
        return F.cross_entropy(logits, y)
    return F.binary_cross_entropy_with_logits(logits, y)


def probabilities(task: Task, logits: torch.Tensor) -> torch.Tensor:
    """[B, C] logits → [B, C] probabilities (softmax over classes for LoS)."""
    return logits.softmax(dim=-1) if task.kind == "multiclass" else logits.sigmoid()


class TrainModule(L.LightningModule):
    """Wraps a plain ``nn.Module`` (Batch → ModelOutput) with the task's loss and metrics."""

    def __init__(self, model: nn.Module, task: Task, lr: float, weight_decay: float) -> None:
        super().__init__()
        self.model, self.task = model, task
        self.lr, self.weight_decay = lr, weight_decay
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    def transfer_batch_to_device(
        self, batch: Batch, device: torch.device, dataloader_idx: int
    ) -> Batch:
        return batch.to(device)

    def _loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(batch)
        loss = task_loss(self.task, out.logits, batch.y)
        if out.aux_loss is not None:
            loss = loss + out.aux_loss
        return loss, out.logits

    def _log_epoch_loss(self, name: str, loss: torch.Tensor, batch: Batch) -> None:
        """The epoch mean of a loss, weighted by batch size and averaged over processes."""
        self.log(
            name, loss, on_step=False, on_epoch=True, batch_size=len(batch.stay_id), sync_dist=True
        )

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self._log_epoch_loss("train/loss", loss, batch)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        loss, logits = self._loss(batch)
        self._log_epoch_loss("val/loss", loss, batch)
        self._val.append((probabilities(self.task, logits).detach().cpu(), batch.y.detach().cpu()))

    def on_validation_epoch_end(self) -> None:
        p = torch.cat([v[0] for v in self._val]).numpy()
        y = torch.cat([v[1] for v in self._val]).numpy()
        self._val.clear()
        value = selection_value(self.task.kind, y, p)
        # Every process computes the metric on its own shard; the mean is what all of them log.
        self.log(MONITOR, float(np.nan_to_num(value, nan=0.0)), sync_dist=True)

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return {
            "stay_id": batch.stay_id,
            "p": probabilities(self.task, self.model(batch).logits),
            "y": batch.y,
        }

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )


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


@dataclasses.dataclass(frozen=True)
class WandbConfig:
    mode: str  # offline | online | disabled (WANDB_MODE in the environment wins)
    project: str
    dir: str


def _logger(wandb_cfg: WandbConfig, run_name: str, group: str, config: dict[str, Any]):
    mode = os.environ.get("WANDB_MODE", wandb_cfg.mode)
    if mode == "disabled":
        return False
    import wandb
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
        # Curves and config only: no system-metrics sampler, no console capture, no environment
        # snapshot (pip freeze, git) — they cost seconds per run and are not benchmark data.
        settings=wandb.Settings(
            console="off",
            x_disable_stats=True,
            x_disable_meta=True,
            x_save_requirements=False,
            disable_git=True,
            disable_code=True,
        ),
    )


def train_one(
    model_name: str,
    model_params: dict[str, Any],
    task: Task,
    cohort: str,
    seed: int,
    paths: DataPaths,
    cfg: TrainConfig,
    wandb_cfg: WandbConfig,
    checkpoint_dir: Path,
    fast_dev_run: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Train with one seed; return (predictions on val and test, learning curve).

    Under multi-process data parallelism every process trains; only rank 0 predicts and returns,
    the others return None.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    torch.set_num_threads(cfg.threads)
    data = EhrCxrDataModule(
        paths, task, cohort, cfg.batch_size, cfg.missing_ratio, cfg.missing_splits, seed
    )
    model = create_model(model_name, data.inputs, task.n_outputs, model_params)
    module = TrainModule(model, task, cfg.lr, cfg.weight_decay)
    run_name = f"{model_name}-{task.name}-{cohort}-seed{seed}"
    logger = _logger(
        wandb_cfg,
        run_name,
        f"{model_name}-{task.name}-{cohort}",
        {
            "model": model_name,
            "task": task.name,
            "cohort": cohort,
            "seed": seed,
            "params": model_params,
            "train": dataclasses.asdict(cfg),
        },
    )
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
        max_epochs=cfg.max_epochs,
        min_epochs=cfg.min_epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=cfg.strategy,
        deterministic=True,
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
        module.load_state_dict(best["state_dict"])
    predictions = predict(module, data, seed)
    return predictions, pd.DataFrame(curves.rows).assign(seed=seed)


@torch.no_grad()
def predict(module: TrainModule, data: EhrCxrDataModule, seed: int) -> pd.DataFrame:
    """Probabilities of the val and test stays on one process (no sampler padding)."""
    module.eval()
    frames = []
    task = module.task
    for split in ("val", "test"):
        parts = [
            module.predict_step(batch, i) for i, batch in enumerate(data.predict_loader(split))
        ]
        p = torch.cat([x["p"] for x in parts]).numpy()
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
