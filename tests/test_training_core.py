"""The training core every model runs on: labels never reach forward, placeholders never reach
BatchNorm, model-owned training hooks, augmentation, the batch additions, registry hygiene,
profiles, and the DVC dependencies of a train stage."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from batches import random_batch
from ehrcxr import params as params_mod
from ehrcxr.batch import Batch, InputSpec, ModelOutput, TrainContext
from ehrcxr.cli import main
from ehrcxr.data.augment import AugmentConfig, augment_films
from ehrcxr.data.datamodule import DataPaths, EhrCxrDataModule
from ehrcxr.errors import EhrcxrError
from ehrcxr.models import broken_models, create_model, list_models, registry
from ehrcxr.models.encoders import EncoderConfig, encode_films, resnet_backbone
from ehrcxr.tasks import TASKS, get_task
from ehrcxr.training import TrainModule

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
ENCODERS = EncoderConfig(**PARAMS["encoders"])
INPUTS = InputSpec(ehr_features=8, ehr_masks=6, time_steps=48, image_size=32)
NO_AUGMENT = AugmentConfig(enabled=False)


def _batch(task_name: str = "phenotype", b: int = 8, seed: int = 0) -> Batch:
    return random_batch(task_name, b=b, seed=seed, inputs=INPUTS)


def _model(name: str, task_name: str = "phenotype") -> nn.Module:
    torch.manual_seed(0)
    return create_model(
        name, INPUTS, get_task(task_name).n_outputs, ENCODERS, params_mod.model_params(PARAMS, name)
    )


# ---- labels and placeholders -------------------------------------------------------------------


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("task_name", TASKS)
def test_labels_never_change_predictions(name: str, task_name: str) -> None:
    module = TrainModule(_model(name, task_name), get_task(task_name), 1e-3, 0.0, NO_AUGMENT).eval()
    batch = _batch(task_name)
    other = _batch(task_name, seed=99)
    assert not torch.equal(batch.y, other.y)
    with torch.no_grad():
        a = module.predict_step(batch, 0)["p"]
        b = module.predict_step(dataclasses.replace(batch, y=other.y), 0)["p"]
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", list_models())
def test_placeholder_content_never_matters_even_in_training_mode(name: str) -> None:
    """A stay without a film: its image tensor's content changes nothing, BatchNorm included."""
    model = _model(name).train()
    batch = _batch().without_labels()
    noisy = dataclasses.replace(
        batch,
        cxr=torch.where(batch.has_cxr[:, None, None, None], batch.cxr, torch.rand_like(batch.cxr)),
    )
    outs, stats = [], []
    for b in (batch, noisy):
        torch.manual_seed(1)  # the same dropout masks
        model.load_state_dict(_model(name).state_dict())  # the same running statistics
        outs.append(model(b).logits)
        stats.append(
            [m.running_mean.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        )
    assert torch.allclose(outs[0], outs[1], atol=1e-6), name
    for x, y in zip(*stats, strict=True):
        assert torch.allclose(x, y), name


def test_placeholder_rows_stay_out_of_batchnorm_statistics() -> None:
    net = resnet_backbone(18, "none").train()
    films = torch.rand(6, 1, 32, 32)
    has = torch.tensor([True, True, True, False, False, False])
    net_all = resnet_backbone(18, "none").train()
    net_all.load_state_dict(net.state_dict())
    encode_films(net, films, has)
    encode_films(net_all, films[:3], has[:3])  # only the films that exist
    for a, b in zip(net.modules(), net_all.modules(), strict=True):
        if isinstance(a, nn.BatchNorm2d):
            assert torch.allclose(a.running_mean, b.running_mean)
            assert torch.allclose(a.running_var, b.running_var)
    # The placeholder is zero in normalised space (the ImageNet mean), one feature for all.
    out = encode_films(net.eval(), films, has)
    assert torch.allclose(out[3], out[4]) and torch.allclose(out[4], out[5])


# ---- augmentation ------------------------------------------------------------------------------


def test_augmentation_moves_training_films_only() -> None:
    films = torch.rand(4, 1, 32, 32)
    has = torch.tensor([True, True, False, True])
    films[2] = 0.0
    torch.manual_seed(0)
    a = augment_films(films, has, AugmentConfig())
    torch.manual_seed(0)
    b = augment_films(films, has, AugmentConfig())
    assert torch.equal(a, b)  # seeded: reproducible
    assert not torch.allclose(a[has], films[has])
    assert torch.equal(a[2], films[2])  # a placeholder stays a placeholder
    assert torch.equal(augment_films(films, has, NO_AUGMENT), films)
    identity = AugmentConfig(degrees=0.0, translate=0.0, scale_min=1.0, scale_max=1.0, flip=0.0)
    assert torch.allclose(augment_films(films, has, identity), films, atol=1e-5)
    flipped = AugmentConfig(degrees=0.0, translate=0.0, scale_min=1.0, scale_max=1.0, flip=1.0)
    assert torch.allclose(augment_films(films, has, flipped)[0], films[0].flip(-1), atol=1e-5)


# ---- model-owned training ----------------------------------------------------------------------


class _Probe(nn.Module):
    """A model that uses every hook and records what it was given."""

    def __init__(self, manual: bool) -> None:
        super().__init__()
        self.head = nn.Linear(4, 1)
        self.other = nn.Linear(4, 1)
        self.register_buffer("prior", torch.zeros(4))
        self.seen_labels_in_forward = False
        self.prepared_rows = 0
        self.calls: list[str] = []
        self.pretrained: dict[str, object] = {}
        self.epochs: list[int] = []
        self.contexts: list[TrainContext] = []
        if manual:
            self.manual_training_step = self._manual

    def forward(self, batch: Batch) -> ModelOutput:
        self.seen_labels_in_forward |= batch.y is not None
        x = batch.ehr[:, 0, :4] - self.prior
        return ModelOutput(logits=self.head(x) + self.other(x))

    def pretrain(self, batches: list[Batch], ctx: TrainContext) -> None:
        self.calls.append("pretrain")
        self.pretrained = {
            "grad": torch.is_grad_enabled(),
            "rows": sum(len(b) for b in batches),
            "labels": all(b.y is not None for b in batches),
            "task": ctx.task.name,
        }
        loss = ctx.loss_fn(self.other(batches[0].ehr[:, 0, :4]), batches[0].y)
        loss.backward()  # gradients work here (the core enables them)
        self.other.zero_grad()

    def prepare(self, batches) -> None:
        self.calls.append("prepare")
        rows = [b.ehr[:, 0, :4] for b in batches]
        self.prior.copy_(torch.cat(rows).mean(dim=0))
        self.prepared_rows = sum(len(r) for r in rows)

    def training_loss(self, batch: Batch, ctx: TrainContext) -> torch.Tensor:
        self.contexts.append(ctx)
        ctx.log("train/probe", 1.0)
        return ctx.loss_fn(self(batch.without_labels()).logits, batch.y)

    def optimizer_groups(self, lr: float, weight_decay: float) -> list[dict]:
        return [
            {"params": self.head.parameters(), "lr": lr},
            {"params": self.other.parameters(), "lr": 0.0},
        ]

    def _manual(self, batch: Batch, ctx: TrainContext) -> torch.Tensor:
        self.contexts.append(ctx)
        for opt in ctx.optimizers:  # two updates per batch, as AUG and InfoReg do
            opt.zero_grad()
            loss = ctx.loss_fn(self(batch.without_labels()).logits, batch.y)
            ctx.backward(loss)
            opt.step()
        return loss.detach()

    def on_train_epoch_end(self, ctx: TrainContext) -> None:
        self.epochs.append(ctx.epoch)


def _loader(n: int = 40, b: int = 8) -> DataLoader:
    batches = []
    for i in range(0, n, b):
        x = _batch("mortality", b=b, seed=i)
        batches.append(dataclasses.replace(x, stay_id=torch.arange(i, i + b)))
    return DataLoader(batches, batch_size=None)


@pytest.mark.parametrize("manual", [False, True], ids=["own-loss", "manual"])
def test_model_owned_training_hooks(manual: bool) -> None:
    probe = _Probe(manual)
    if manual:
        probe.configure_optimizers = lambda lr, wd: [
            torch.optim.SGD(probe.head.parameters(), lr=lr),
            torch.optim.SGD(probe.other.parameters(), lr=lr),
        ]
    module = TrainModule(
        probe, get_task("mortality"), 0.1, 0.0, NO_AUGMENT, prepare_loader=_loader()
    )
    assert module.automatic_optimization is not manual
    before = {k: v.clone() for k, v in probe.state_dict().items()}
    trainer = L.Trainer(
        max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=_loader(), val_dataloaders=_loader(16))
    assert probe.prepared_rows == 40 and not torch.equal(probe.prior, before["prior"])
    assert probe.calls == ["pretrain", "prepare"]  # once each, pre-training first
    assert probe.pretrained == {"grad": True, "rows": 40, "labels": True, "task": "mortality"}
    assert probe.epochs == [0, 1, 2]
    assert not probe.seen_labels_in_forward
    assert [c.epoch for c in probe.contexts[::5]] == [0, 1, 2] and probe.contexts[
        -1
    ].max_epochs == 3
    assert not torch.equal(probe.head.weight, before["head.weight"])
    if manual:
        assert len(probe.contexts[0].optimizers) == 2
        assert not torch.equal(probe.other.weight, before["other.weight"])
    else:
        assert "train/probe" in trainer.callback_metrics
        assert torch.equal(probe.other.weight, before["other.weight"])  # its group has lr 0
    assert "prior" in probe.state_dict()  # the prepared statistics travel in the checkpoint


# ---- data: cxr_time, mask channels, dropped last batch -------------------------------------------


def test_batch_carries_film_time_and_mask_channels(small_data: dict[str, Path]) -> None:
    paths = DataPaths(small_data["extract"], small_data["features"], small_data["images"])
    task = get_task("mortality")
    data = EhrCxrDataModule(paths, task, "base", 8, 0.0, ("train", "val", "test"), 0)
    meta = json.loads((small_data["features"] / "features.json").read_text())
    names = meta["value_names"]
    assert [names[i] + "_mask" for i in data.inputs.mask_feature] == meta["mask_names"]
    cohort = pd.read_parquet(small_data["extract"] / "cohort.parquet").set_index("stay_id")
    batch = next(iter(data.predict_loader("test")))
    for sid, has, t in zip(
        batch.stay_id.tolist(), batch.has_cxr.tolist(), batch.cxr_time.tolist(), strict=True
    ):
        row = cohort.loc[sid]
        if has:
            expected = (row["cxr_time"] - row["intime"]).total_seconds() / 3600
            assert t == pytest.approx(expected, abs=1e-3) and -24 <= t <= 48
        else:
            assert t == 0.0
    # Removing films removes their times too.
    gone = EhrCxrDataModule(paths, task, "matched", 8, 1.0, ("train", "val", "test"), 0)
    b = next(iter(gone.predict_loader("test")))
    assert not b.has_cxr.any() and not b.cxr_time.any()
    train = list(data.train_dataloader())
    assert all(len(x) == 8 for x in train)  # the incomplete last batch is dropped
    assert len(train) == len(data.indices("train")) // 8


# ---- registry hygiene --------------------------------------------------------------------------


def test_registry_names_are_module_names_and_grid_holds_every_model() -> None:
    assert registry.model_modules() == list_models()
    for name in list_models():
        cls = registry.get_model_class(name)
        assert cls.__module__ == f"ehrcxr.models.{name}" and cls.registry_name == name
    assert sorted(PARAMS["grid"]["models"]) == list_models()
    assert sorted(PARAMS["robustness"]["models"]) == list_models()
    assert set(PARAMS["models"]) == set(list_models())
    assert broken_models() == {}


def test_paradigms_are_the_carebench_papers_groups() -> None:
    """Appendix C of the CareBench paper: unimodal baselines, complete-modality fusion methods
    (given the placeholder: zero imputation) and missing-modality methods."""
    groups = {
        "unimodal": {"lstm", "transformer", "resnet"},
        "complete-modality": {"late_fusion", "utde", "daft", "mmtm", "aug", "inforeg"},
        "missing-modality": {
            "healnet",
            "flex_moe",
            "drfuse",
            "umse",
            "shaspec",
            "m3care",
            "medfuse",
            "smil",
        },
    }
    assert {m: registry.model_paradigm(m) for m in list_models()} == {
        m: g for g, members in groups.items() for m in members
    }
    with pytest.raises(ValueError, match="only a multimodal model"):
        registry.register_model("probe", ("ehr",), missing_modality=True)


def test_a_broken_model_module_is_reported_by_name(tmp_path: Path, monkeypatch) -> None:
    import ehrcxr.models as package

    (tmp_path / "broken_probe.py").write_text("import not_a_real_package_xyz\n")
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_BROKEN", {})
    assert "lstm" in list_models()  # the others still load
    assert "broken_probe" in broken_models()
    assert "not_a_real_package_xyz" in broken_models()["broken_probe"]
    with pytest.raises(EhrcxrError, match=r"broken_probe.*failed to import"):
        registry.get_model_class("broken_probe")


def test_params_errors_and_constructor_errors_are_told_apart(monkeypatch) -> None:
    with pytest.raises(EhrcxrError, match=r"models\.medfuse: unknown key"):
        create_model("medfuse", INPUTS, 1, ENCODERS, {"fusion_hiden": 3})

    def failing_init(self, inputs, n_outputs, encoders, ehr_layers=2, fusion_hidden=512):
        raise TypeError("a bug inside the constructor")

    cls = registry.get_model_class("medfuse")
    monkeypatch.setattr(cls, "__init__", failing_init)
    with pytest.raises(TypeError, match="a bug inside the constructor"):
        create_model("medfuse", INPUTS, 1, ENCODERS, {})


# ---- profiles ----------------------------------------------------------------------------------


def test_paper_profile_is_one_switch(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    paper = params_mod.apply_profile({**raw, "profile": "paper"})
    enc = EncoderConfig(**paper["encoders"])
    assert (enc.dim, enc.resnet_depth, enc.resnet_weights) == (256, 50, "imagenet")
    assert paper["train"]["seeds"] == [42, 123, 1234] and paper["train"]["lr"] == 1e-4
    assert paper["cache_images"]["crop"] == 224
    assert paper["grid"] == raw["grid"]  # only what the profile names changes
    assert params_mod.apply_profile(raw) is raw  # default: as written
    with pytest.raises(EhrcxrError, match="no such key"):
        params_mod.apply_profile({**raw, "profile": "x", "profiles": {"x": {"train": {"lrr": 1}}}})
    with pytest.raises(EhrcxrError, match="not defined"):
        params_mod.apply_profile({**raw, "profile": "nope"})


# ---- DVC dependencies --------------------------------------------------------------------------


def _imported_package_files(argv: list[str], command: str) -> set[str]:
    """Package files (relative to ``src/ehrcxr``) that ``ehrcxr <argv>`` loads, the warm
    interpreter's preloads for ``command`` included (run as ``ehrcxr``, it loads them too)."""
    script = (
        "import json, sys\n"
        "from ehrcxr.cli import main\n"
        f"rc = main({json.dumps(argv)})\n"
        "import importlib, ehrcxr.warm\n"
        f"[importlib.import_module(m) for m in ehrcxr.warm.PRELOAD.get({command!r}, ())]\n"
        "files = sorted({m.__file__ for m in list(sys.modules.values())"
        " if getattr(m, '__file__', None) and '/src/ehrcxr/' in m.__file__})\n"
        "print(json.dumps([rc, files]))\n"
    )
    env = {**os.environ, "WANDB_MODE": "disabled"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    rc, files = json.loads(done.stdout.strip().splitlines()[-1])
    assert rc == 0
    return {f.split("/src/ehrcxr/", 1)[1] for f in files}


def test_every_file_a_grid_stage_imports_is_in_its_configuration(
    small_data: dict[str, Path], tmp_path: Path
) -> None:
    """A train or evaluate stage depends on one file of `ehrcxr configure` that fingerprints
    its code: every package file the command loads must be in that fingerprint."""
    from ehrcxr.stages import configure

    params = params_mod.load(REPO / "params.yaml")
    hyper = tmp_path / "hyperparameters"
    assert main(["hyperparameters", "--tuning", str(tmp_path / "none"), "--out", str(hyper),
                 "--params", str(_no_search_params(tmp_path))]) == 0  # fmt: skip
    for model in ("late_fusion", "inforeg"):
        argv = [
            *_train_argv(small_data, tmp_path, model),
            "--hyperparameters", str(hyper / f"{model}-mortality-matched.json"),
        ]  # fmt: skip
        imported = _imported_package_files(argv, "train")
        code = set(configure.train_config(params, model)["code"])
        assert {f"models/{model}.py", "hyperparameters.py"} <= imported
        assert imported <= code, sorted(imported - code)
    # A search: the training core, its own code and its model's file.
    one_call = _one_call_params(tmp_path)
    config = tmp_path / "config"
    assert main(["configure", "--out", str(config), "--params", str(one_call)]) == 0
    tune = [
        "tune", "--model", "m3care", "--task", "mortality", "--cohort", "matched",
        "--extract", str(small_data["extract"]), "--features", str(small_data["features"]),
        "--images", str(small_data["images"]), "--out", str(tmp_path / "search"),
        "--trials", str(tmp_path / "t.csv"), "--summary", str(tmp_path / "s.json"),
        "--plot", str(tmp_path / "c.png"), "--checkpoints", str(tmp_path / "ck"),
        "--config", str(config / "tune-m3care.json"), "--params", str(one_call),
    ]  # fmt: skip
    imported = _imported_package_files(tune, "tune")
    code = set(configure.tune_config(params, "m3care")["code"])
    assert {"models/m3care.py", "tuning.py", "stages/tune.py"} <= imported
    assert imported <= code, sorted(imported - code)
    predictions = tmp_path / "inforeg.parquet"
    evaluate = [
        "evaluate", "--predictions", str(predictions), "--task", "mortality",
        "--stays", str(small_data["extract"] / "cohort.parquet"), "--out", str(tmp_path / "m.json"),
        "--fairness-out", str(tmp_path / "f.json"), "--params", str(REPO / "params.yaml"),
    ]  # fmt: skip
    imported = _imported_package_files(evaluate, "evaluate")
    assert "evaluation/fairness.py" in imported
    assert imported <= set(configure.EVALUATE_CODE), sorted(imported - set(configure.EVALUATE_CODE))
    stages = {
        kind: yaml.safe_load((REPO / "pipeline" / kind / "dvc.yaml").read_text())["stages"][kind]
        for kind in ("train", "evaluate", "robustness")
    }
    assert {
        "data/config/train-${item.model}.json",
        "data/hyperparameters/${item.model}-${item.task}-${item.cohort}.json",
    } <= set(stages["train"]["deps"])
    tune = yaml.safe_load((REPO / "pipeline" / "tune" / "dvc.yaml").read_text())["stages"]["tune"]
    assert "data/config/tune-${item.model}.json" in tune["deps"]
    assert "data/config/evaluate.json" in stages["evaluate"]["deps"]
    assert {"data/config/train-${item.model}.json", "data/config/evaluate.json"} <= set(
        stages["robustness"]["deps"]
    )


def _no_search_params(tmp: Path) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tune"]["models"] = []
    path = tmp / "no-search.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _one_call_params(tmp: Path) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tune"] |= {"models": ["m3care"], "tasks": ["mortality"], "cohorts": ["matched"],
                    "n_calls": 1, "n_initial_points": 1, "seeds": [42]}  # fmt: skip
    raw["train"] |= {"max_epochs": 1, "min_epochs": 1}
    raw["wandb"]["mode"] = "disabled"
    path = tmp / "one-call.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _train_argv(data: dict[str, Path], tmp: Path, model: str) -> list[str]:
    return [
        "train", "--model", model, "--task", "mortality", "--cohort", "matched",
        "--extract", str(data["extract"]), "--features", str(data["features"]),
        "--images", str(data["images"]), "--out", str(tmp / model),
        "--predictions", str(tmp / f"{model}.parquet"), "--params", str(REPO / "params.yaml"),
        "--fast-dev-run",
    ]  # fmt: skip


# ---- the missing-CXR sweep -----------------------------------------------------------------------


def test_film_removal_is_nested_per_seed_and_limited_to_the_named_splits() -> None:
    from ehrcxr.data.datamodule import Arrays, drop_images

    n = 400
    rng = np.random.default_rng(0)
    rows = torch.as_tensor(np.where(rng.random(n) < 0.8, np.arange(n), -1))
    split = np.array(["train", "val", "test"])[rng.integers(0, 3, n)]
    arrays = Arrays(
        ehr=torch.zeros(n, 1, 1), ehr_mask=torch.zeros(n, 1, 1), cxr=torch.zeros(n, 1, 1),
        cxr_row=rows, cxr_time=torch.zeros(n), y=torch.zeros(n, 1), stay_id=torch.arange(n),
        split=split,
    )  # fmt: skip
    removed = {}
    for ratio in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        kept = drop_images(arrays, ratio, ("train", "test"), seed=7)
        removed[ratio] = set(np.flatnonzero((rows.numpy() >= 0) & (kept.numpy() < 0)))
        for s in ("train", "test"):
            had = int(((split == s) & (rows.numpy() >= 0)).sum())
            lost = sum(1 for i in removed[ratio] if split[i] == s)
            assert lost == int(np.floor(ratio * had))
        assert not any(split[i] == "val" for i in removed[ratio])
    ratios = sorted(removed)
    for low, high in itertools.pairwise(ratios):
        assert removed[low] <= removed[high], (low, high)
    other = drop_images(arrays, 0.4, ("train", "test"), seed=8)
    assert set(np.flatnonzero((rows.numpy() >= 0) & (other.numpy() < 0))) != removed[0.4]


def test_the_batch_budget_gives_each_cohort_whole_epochs_of_about_the_same_cost() -> None:
    from ehrcxr.training import epochs

    cfg = dataclasses.replace(
        params_mod.train_config(params_mod.load(REPO / "params.yaml")), max_epochs=10
    )
    budget = dataclasses.replace(cfg, max_batches=90)
    assert epochs(budget, 25) == 4  # matched subset: 4 × 25 = 100 batches
    assert epochs(budget, 91) == 1  # base cohort: one epoch of 91
    assert epochs(budget, 3) == 10  # a tiny split: max_epochs caps it
    assert epochs(dataclasses.replace(cfg, max_batches=-1), 25) == 10  # no budget: epochs only
