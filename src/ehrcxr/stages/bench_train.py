"""``ehrcxr bench-train``: per model, training and inference throughput, the input pipeline's
share of a training step, and peak memory, on the current params and data.

Each model runs in a fresh child interpreter (so its peak memory is its own) through the same
LightningModule, data module, augmentation and Trainer settings as ``ehrcxr train``
(accelerator, precision, threads), for ``--warmup`` untimed then ``--batches`` timed training
batches, then one timed pass of prediction over the validation and test stays. A step's time is
split at Lightning's batch hooks: **input** is the time from the end of one batch to the start of
the next (fetching and collating the batch from the in-memory arrays, moving it to the device,
augmenting the films), **step** the forward, backward and optimiser update. On a GPU both are
synchronised, and the input share shows whether the loader starves the device.

Prints one JSON line per model and a table; ``--out`` writes the list as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ehrcxr import params as params_mod
from ehrcxr.stages._data import add_data_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="*", default=None, help="default: params grid.models")
    parser.add_argument("--task", default="phenotype", help="mortality | phenotype | los")
    parser.add_argument("--cohort", default="matched", help="matched | base")
    parser.add_argument("--batches", type=int, default=30, help="timed training batches")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    add_data_arguments(parser)
    parser.add_argument("--params", default="params.yaml", help="params file")
    parser.add_argument("--out", default=None, help="write the measurements here (JSON)")


def _measure(job: tuple) -> dict:
    """One model's measurements, in a child process."""
    import resource
    import time

    import lightning as L
    import torch

    from ehrcxr.data.datamodule import DataPaths
    from ehrcxr.stages.train import run_spec
    from ehrcxr.training import build_run

    params, model_name, task_name, cohort, paths, batches, warmup = job
    spec = run_spec(params, model_name, task_name, cohort, DataPaths(*(Path(p) for p in paths)))
    cfg = spec.train
    data, module = build_run(spec, cfg.seeds[0])

    class StepTimer(L.Callback):
        """Input and step time of each training batch after the warm-up; stops the fit."""

        def __init__(self) -> None:
            self.seen = 0
            self.input: list[float] = []
            self.step: list[float] = []
            self.ended: float | None = None
            self.started = 0.0

        def on_train_epoch_start(self, trainer, module) -> None:
            self.ended = None  # an epoch boundary is not input time

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            _synchronize(module.device)
            self.started = time.perf_counter()
            if self.ended is not None and self.seen >= warmup:
                self.input.append(self.started - self.ended)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            _synchronize(module.device)
            self.ended = time.perf_counter()
            if self.seen >= warmup:
                self.step.append(self.ended - self.started)
            self.seen += 1
            if self.seen >= warmup + batches:
                trainer.should_stop = True

    timer = StepTimer()
    trainer = L.Trainer(
        max_epochs=10_000,  # the timer stops the run after its batches
        accelerator=cfg.accelerator,
        devices=1,
        precision=cfg.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=data)
    device = trainer.strategy.root_device
    module.to(device).eval()
    n_predicted, start = 0, time.perf_counter()
    with torch.no_grad(), trainer.precision_plugin.forward_context():
        for split in ("val", "test"):
            for i, batch in enumerate(data.predict_loader(split)):
                module.predict_step(batch.to(device), i)
                n_predicted += len(batch)
    _synchronize(device)
    predict_seconds = time.perf_counter() - start
    # Per batch: the step's mean time and the input's (measured between batches of an epoch).
    step = sum(timer.step) / len(timer.step)
    wait = sum(timer.input) / len(timer.input) if timer.input else 0.0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        memory = "GPU allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        memory = "process RSS"
    return {
        "model": model_name,
        "task": task_name,
        "cohort": cohort,
        "device": str(device),
        "precision": cfg.precision,
        "batch_size": cfg.batch_size,
        "batches": len(timer.step),
        "train_samples_per_s": round(cfg.batch_size / (step + wait), 1),
        "step_ms": round(1000 * step, 1),
        "input_ms": round(1000 * wait, 2),
        "input_share": round(wait / (step + wait), 3),
        "predict_samples_per_s": round(n_predicted / predict_seconds, 1),
        "peak_memory_mb": round(peak, 1),
        "memory": memory,
    }


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> None:
    import multiprocessing

    params = params_mod.load(args.params)
    models = args.models or list(params_mod.section(params, "grid")["models"])
    paths = (args.extract, args.features, args.images)
    jobs = [(params, m, args.task, args.cohort, paths, args.batches, args.warmup) for m in models]
    results = []
    # One fresh interpreter per model: its peak memory is its own. Spawned, not forked: a fork of
    # a process whose torch thread pools already ran can deadlock in the child.
    context = multiprocessing.get_context("spawn")
    for job in jobs:
        with context.Pool(1, maxtasksperchild=1) as pool:
            result = pool.apply(_measure, (job,))
        print(json.dumps(result), flush=True)
        results.append(result)
    header = "model, train samples/s, step ms, input share, predict samples/s, peak MB"
    print(header)
    for r in results:
        print(
            f"{r['model']}, {r['train_samples_per_s']}, {r['step_ms']}, "
            f"{100 * r['input_share']:.1f} %, {r['predict_samples_per_s']}, {r['peak_memory_mb']}"
        )
    if args.out:
        from ehrcxr.io import write_text_atomic

        write_text_atomic(args.out, json.dumps(results, indent=2) + "\n")
