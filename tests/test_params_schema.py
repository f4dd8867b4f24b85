"""params.yaml against its declared schema (src/ehrcxr/params_schema.yaml): every bad value is one
line naming the key, the value and what is allowed, before any heavy import or any output."""

from __future__ import annotations

import copy
import inspect
import os
import subprocess
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

import ehrcxr
from ehrcxr import params as params_mod
from ehrcxr.errors import EhrcxrError

REPO = Path(__file__).resolve().parents[1]
SRC = Path(ehrcxr.__file__).resolve().parents[1]
RAW = yaml.safe_load((REPO / "params.yaml").read_text())
SCHEMA = params_mod.schema()


def _write(tmp: Path, raw: Any, name: str = "params.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _error(path: Path) -> str:
    with pytest.raises(EhrcxrError) as caught:
        params_mod.load(path)
    message = str(caught.value)
    assert "\n" not in message and message.strip() == message, message
    return message


# ---- the committed params ----------------------------------------------------------------------


def test_the_committed_params_and_the_paper_profile_validate(tmp_path: Path) -> None:
    params_mod.validate(copy.deepcopy(RAW))
    params_mod.validate({k: v for k, v in RAW.items() if k != "profile"})  # absent: default
    assert params_mod.load(REPO / "params.yaml") == RAW  # default profile: as written
    paper = _write(tmp_path, {**RAW, "profile": "paper"})
    loaded = params_mod.load(paper)
    assert loaded["train"]["accelerator"] == "gpu" and loaded["encoders"]["dim"] == 256
    params_mod.validate(loaded)


OPTIONS = {
    "int": {"min", "max", "above", "below", "choices"},
    "float": {"min", "max", "above", "below"},
    "str": {"choices", "choices_from", "non_empty"},
    "bool": set(),
    "list": {"items", "min_items", "unique"},
    "mapping": {"keys", "keys_from"},
    "search": set(),
    "profiles": set(),
}


def _nodes(node: dict, where: str = "") -> list[tuple[str, dict]]:
    found = [(where, node)]
    if node.get("type") == "list":
        found += _nodes(node["items"], f"{where}[]")
    for key, child in (node.get("keys") or {}).items() if node.get("type") == "mapping" else ():
        found += _nodes(child, f"{where}.{key}")
    return found


def test_every_schema_node_is_well_formed() -> None:
    """A known type, only that type's options, and choices and bounds of that type."""
    nodes = _nodes({k: v for k, v in SCHEMA.items() if k != "search"})
    assert len(nodes) > 200
    for where, node in nodes:
        kind = node.get("type")
        assert kind in OPTIONS, where
        assert set(node) - {"type", "optional", "nullable"} <= OPTIONS[kind], where
        for option in ("min", "max", "above", "below"):
            if option in node:
                assert params_mod._is_type(kind, node[option]), where
        for choice in node.get("choices", ()):
            assert params_mod._is_type(kind, choice), where
        if "choices_from" in node:
            assert params_mod._named_set(node["choices_from"], RAW), where


def test_the_schema_declares_each_models_constructor_arguments() -> None:
    """models.<name> in the schema: exactly the constructor's own keyword arguments, with a
    type matching its annotation (float settings accept ints; a tuple is a list)."""
    from ehrcxr.models import registry

    kinds = {int: "int", float: "float", str: "str", bool: "bool"}
    declared = SCHEMA["keys"]["models"]["keys"]
    assert set(declared) == set(registry.model_modules())
    for name in registry.model_modules():
        settings = {k: v for k, v in declared[name]["keys"].items() if v["type"] != "search"}
        arguments = registry.model_arguments(name)
        assert set(settings) == set(arguments), name
        for key, parameter in arguments.items():
            annotation = parameter.annotation
            if isinstance(annotation, str):  # postponed annotations
                module = inspect.getmodule(registry.get_model_class(name))
                annotation = eval(annotation, vars(module))
            expected = "list" if typing.get_origin(annotation) is tuple else kinds[annotation]
            assert settings[key]["type"] == expected, f"models.{name}.{key}"


def test_the_registered_models_are_read_without_importing_the_registry() -> None:
    from ehrcxr.model_names import NOT_MODELS
    from ehrcxr.models import broken_models, list_models, registry

    assert list(params_mod.registered_models()) == registry.model_modules() == list_models()
    assert broken_models() == {}
    # The file names are the package's modules as Python finds them, the helpers left out.
    import pkgutil

    import ehrcxr.models as package

    found = sorted(info.name for info in pkgutil.iter_modules(package.__path__))
    assert sorted([*params_mod.registered_models(), *NOT_MODELS]) == found


def test_the_schemas_choices_are_the_codes() -> None:
    """Choices the schema writes out are those of the code that reads them."""
    from ehrcxr import tasks, tuning
    from ehrcxr.data.phenotypes import phenotype_columns, phenotype_table
    from ehrcxr.evaluation import runs, statistics
    from ehrcxr.models import encoders, inforeg, utde

    keys = SCHEMA["keys"]
    models = keys["models"]["keys"]
    assert tuple(keys["source"]["choices"]) == params_mod.SOURCES
    assert tuple(keys["task"]["choices"]) == tasks.TASKS
    assert tuple(keys["cohort"]["choices"]) == tasks.COHORTS
    for section in ("grid", "tune"):
        assert tuple(keys[section]["keys"]["tasks"]["items"]["choices"]) == tasks.TASKS
        assert tuple(keys[section]["keys"]["cohorts"]["items"]["choices"]) == tasks.COHORTS
    assert tuple(keys["tune"]["keys"]["acq_func"]["choices"]) == tuning.ACQ_FUNCS
    assert tuple(SCHEMA["search"]["priors"]) == tuning.PRIORS
    assert tuple(models["utde"]["keys"]["mixup_level"]["choices"]) == utde.MIXUP_LEVELS
    assert tuple(models["inforeg"]["keys"]["window_trace"]["choices"]) == inforeg.TRACES
    enc = keys["encoders"]["keys"]
    assert set(enc["resnet_depth"]["choices"]) == set(encoders.RESNETS)
    assert tuple(enc["resnet_weights"]["choices"]) == encoders.WEIGHTS
    metrics = keys["statistics"]["keys"]["metrics"]["keys"]
    binary = set(statistics._BINARY)
    assert set(metrics["mortality"]["items"]["choices"]) == binary
    assert set(metrics["phenotype"]["items"]["choices"]) == binary
    assert set(metrics["los"]["items"]["choices"]) == set(statistics._MULTICLASS)
    assert set(runs.PER_LABEL) <= set(keys["report"]["keys"]["robustness_metric"]["choices"])
    assert params_mod._named_set("phenotypes", {}) == tuple(phenotype_columns())
    assert phenotype_columns() == phenotype_table()["column"].tolist()  # stdlib read = pandas'


def test_the_trainer_choices_are_lightnings() -> None:
    from lightning.fabric.connector import _PRECISION_INPUT_STR
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    train = SCHEMA["keys"]["train"]["keys"]
    accelerators = {"auto", "gpu", *AcceleratorRegistry.available_accelerators()}
    assert set(train["accelerator"]["choices"]) <= accelerators
    assert set(train["strategy"]["choices"]) <= {"auto", *StrategyRegistry.available_strategies()}
    assert set(train["precision"]["choices"]) <= set(typing.get_args(_PRECISION_INPUT_STR))


# ---- one line per bad value --------------------------------------------------------------------


def _set(*path_value: Any) -> Callable[[dict], None]:
    *path, value = path_value

    def apply(raw: dict) -> None:
        node = raw
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return apply


def _drop(*path: str) -> Callable[[dict], None]:
    def apply(raw: dict) -> None:
        node = raw
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return apply


REGISTERED = ", ".join(params_mod.registered_models())

# (id, change to the committed params, what the one line must hold: key, value, allowed)
BAD: list[tuple[str, Callable[[dict], None], tuple[str, ...]]] = [
    ("lr-text", _set("train", "lr", "abc"), ("train.lr:", "'abc'", "a number > 0")),
    ("lr-exponent", _set("train", "lr", "1e-4"), ("train.lr:", "'1e-4'", "decimal point")),
    ("lr-quoted", _set("train", "lr", "0.001"), ("train.lr:", "'0.001'", "without quotes")),
    ("batch-negative", _set("train", "batch_size", -3), ("train.batch_size:", "-3", "≥ 1")),
    ("batch-bool", _set("train", "batch_size", True), ("train.batch_size:", "True", "integer")),
    ("seeds-text", _set("train", "seeds", "x"), ("train.seeds:", "'x'", "a list of integers")),
    ("seeds-item", _set("train", "seeds", [1, "x"]), ("train.seeds[1]:", "'x'", "an integer")),
    ("seeds-repeat", _set("train", "seeds", [1, 1]), ("train.seeds[1]:", "1", "no repeats")),
    ("missing-lr", _drop("train", "lr"), ("train.lr:", "missing", "a number > 0")),
    ("missing-section", _drop("augment"), ("augment:", "missing", "scale_min")),
    ("unknown-key", _set("train", "lrr", 0.1), ("train.lrr:", "no such key", "did you mean lr")),
    ("unknown-section", _set("trian", {}), ("trian:", "no such key", "train")),
    (
        "accelerator",
        _set("train", "accelerator", "gpux"),
        ("train.accelerator:", "'gpux'", "cpu, gpu"),
    ),
    ("precision-int", _set("train", "precision", 32), ("train.precision:", "32", "32-true")),
    ("dropout", _set("encoders", "dropout", 1.5), ("encoders.dropout:", "1.5", "[0, 1)")),
    (
        "model-setting-type",
        _set("models", "medfuse", "fusion_hidden", "big"),
        ("models.medfuse.fusion_hidden:", "'big'", "an integer ≥ 1"),
    ),
    (
        "model-setting-float-for-int",
        _set("models", "aug", "interval", 2.5),
        ("models.aug.interval:", "2.5", "an integer ≥ 1"),
    ),
    (
        "model-setting-choice",
        _set("models", "utde", "mixup_level", "token"),
        ("models.utde.mixup_level:", "'token'", "batch_seq_feature"),
    ),
    (
        "model-setting-unknown",
        _set("models", "medfuse", "fusion_hiden", 3),
        ("models.medfuse.fusion_hiden:", "no such key", "fusion_hidden"),
    ),
    ("model", _set("model", "aug2"), ("model:", "'aug2'", REGISTERED)),
    (
        "grid-models",
        _set("grid", "models", ["lstm", "aug2"]),
        ("grid.models[1]:", "'aug2'", REGISTERED),
    ),
    ("tune-models", _set("tune", "models", ["aug2"]), ("tune.models[0]:", "'aug2'", REGISTERED)),
    (
        "robustness-models",
        _set("robustness", "models", ["lstm", "aug2"]),
        ("robustness.models[1]:", "'aug2'", REGISTERED),
    ),
    (
        "models-section",
        _set("models", "aug2", {}),
        ("models.aug2:", "not a registered", REGISTERED),
    ),
    ("models-missing", _drop("models", "aug"), ("models.aug:", "missing", "alpha")),
    (
        "tune-without-search",
        _set("tune", "models", ["lstm"]),
        ("tune.models[0]:", "'lstm'", "search space"),
    ),
    (
        "search-low-above-high",
        _set("models", "aug", "search", "alpha", {"low": 0.8, "high": 0.2}),
        ("models.aug.search.alpha:", "'low': 0.8", "low < high"),
    ),
    (
        "search-outside-the-setting",
        _set("models", "aug", "search", "alpha", {"low": 0.2, "high": 1.5}),
        ("models.aug.search.alpha.high:", "1.5", "[0, 1]"),
    ),
    (
        "search-unknown-setting",
        _set("models", "aug", "search", "nope", {"low": 1, "high": 2}),
        ("models.aug.search.nope:", "'nope'", "alpha, lam"),
    ),
    (
        "search-prior",
        _set("models", "smil", "search", "inner_lr", {"low": 0.1, "high": 0.5, "prior": "normal"}),
        ("models.smil.search.inner_lr.prior:", "'normal'", "log-uniform"),
    ),
    (
        "search-one-choice",
        _set("models", "aug", "search", "interval", {"choices": [5]}),
        ("models.aug.search.interval.choices:", "[5]", "at least 2"),
    ),
    (
        "split-sum",
        _set("extract", "split", "test", 0.1),
        ("extract.split:", "'test': 0.1", "summing to 1"),
    ),
    ("split-zero", _set("extract", "split", "val", 0), ("extract.split.val:", "0", "(0, 1)")),
    ("scale", _set("augment", "scale_min", 1.2), ("augment.scale_min:", "1.2", "scale_max")),
    (
        "initial-points",
        _set("tune", "n_initial_points", 9),
        ("tune.n_initial_points:", "9", "tune.n_calls"),
    ),
    (
        "heads",
        _set("encoders", "transformer_heads", 5),
        ("encoders.transformer_heads:", "5", "divisor of encoders.dim"),
    ),
    (
        "imagenet-width",
        _set("encoders", "resnet_weights", "imagenet"),
        ("encoders.resnet_weights:", "'imagenet'", "resnet_width"),
    ),
    ("top-k", _set("models", "flex_moe", "top_k", 9), ("models.flex_moe.top_k:", "9", "n_experts")),
    (
        "phenotype",
        _set("report", "robustness_phenotypes", ["pneumonia", "flu"]),
        ("report.robustness_phenotypes[1]:", "'flu'", "pneumonia"),
    ),
    ("profile", _set("profile", "nope"), ("profile:", "'nope'", "default, paper")),
    (
        "profile-value",
        _set("profiles", "paper", "train", "lr", "abc"),
        ("profiles.paper.train.lr:", "'abc'", "a number > 0"),
    ),
    (
        "profile-key",
        _set("profiles", "paper", "train", "lrr", 0.1),
        ("profiles.paper.train.lrr:", "no such key", "lr"),
    ),
    (
        "profile-stage-key",
        _set("profiles", "paper", "grid", {"tasks": ["los"]}),
        ("profiles.paper", "grid.tasks", "before any profile"),
    ),
]


@pytest.mark.parametrize(("change", "expected"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_a_bad_value_is_one_line_naming_key_value_and_what_is_allowed(
    change: Callable[[dict], None], expected: tuple[str, ...], tmp_path: Path
) -> None:
    raw = copy.deepcopy(RAW)
    change(raw)
    message = _error(_write(tmp_path, raw))
    assert message.startswith("params.yaml "), message
    for part in expected:
        assert part in message, (part, message)


def test_the_profile_applied_params_are_checked_too(tmp_path: Path) -> None:
    """A profile's values pass one by one, yet break a check across keys once applied."""
    raw = copy.deepcopy(RAW)
    raw["profiles"]["paper"]["tune"]["n_initial_points"] = 25  # the profile's n_calls: 20
    params_mod.load(_write(tmp_path, raw))  # the default profile does not apply it
    raw["profile"] = "paper"
    message = _error(_write(tmp_path, raw))
    assert message.startswith(
        "params.yaml (profile paper) tune.n_initial_points: 25 is not allowed (≤ tune.n_calls 20)"
    ), message


def test_the_message_names_the_file_given(tmp_path: Path) -> None:
    raw = copy.deepcopy(RAW)
    raw["train"]["batch_size"] = 0
    assert _error(_write(tmp_path, raw, "other.yaml")).startswith("other.yaml train.batch_size: 0")


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("train:\n  lr: [1, 2\n", "line 3, column 1", "expected ',' or ']'"),
        ("train:\n  lr: 1\n\tbatch_size: 2\n", "line 3, column 1", "tab"),
        ("train:\n  lr: 1\n  lr: 2\n", "line 3, column 3", "'lr' is written twice"),
        ("a: 1\n b: 2\n", "line 2, column 3", "mapping values"),
    ],
    ids=["unclosed", "tab", "duplicate-key", "indentation"],
)
def test_a_yaml_syntax_error_names_file_line_and_column(
    text: str, where: str, problem: str, tmp_path: Path
) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    message = _error(path)
    assert message.startswith(f"{path}: not valid YAML at {where}: "), message
    assert problem in message, message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "params.yaml: the file is empty; expected a mapping of sections"),
        ("- 1\n- 2\n", "params.yaml: [1, 2] is not allowed (a mapping of sections)"),
    ],
    ids=["empty", "list"],
)
def test_a_file_that_is_not_a_mapping_is_one_line(text: str, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert _error(path) == expected


def test_a_long_value_is_shown_truncated(tmp_path: Path) -> None:
    raw = copy.deepcopy(RAW)
    raw["train"]["accelerator"] = "x" * 500
    message = _error(_write(tmp_path, raw))
    assert "x" * 50 in message and "x" * 100 not in message and "…" in message


# ---- cheap: no heavy import, no output ---------------------------------------------------------


def test_loading_params_imports_only_yaml_and_the_standard_library() -> None:
    script = (
        "import sys, time\n"
        "start = time.perf_counter()\n"
        "from ehrcxr import params\n"
        f"params.load({str(REPO / 'params.yaml')!r})\n"
        "heavy = sorted({'torch', 'pandas', 'numpy', 'lightning', 'skopt'} & set(sys.modules))\n"
        "print(heavy, time.perf_counter() - start)\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    heavy, seconds = done.stdout.rsplit(" ", 1)
    assert heavy == "[]", heavy
    assert float(seconds) < 1.0, seconds


def _cli_env() -> dict[str, str]:
    return {
        **os.environ,
        "EHRCXR_WARM": "0",
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda raw: raw["train"].update(batch_size=-3), "train.batch_size: -3 is not allowed"),
        (lambda raw: raw["train"].update(accelerator="gpux"), "train.accelerator: 'gpux'"),
        (
            lambda raw: raw.update(model="aug2"),
            f"model: 'aug2' is not allowed (one of the registered models: {REGISTERED})",
        ),
        (None, "params.yaml: not valid YAML at line 3, column 1"),
    ],
    ids=["batch-size", "accelerator", "model", "yaml-syntax"],
)
def test_train_with_bad_params_exits_2_with_one_line_fast_and_writes_nothing(
    change: Callable[[dict], None] | None, expected: str, tmp_path: Path
) -> None:
    path = tmp_path / "params.yaml"
    if change is None:
        path.write_text("train:\n  lr: [1, 2\n")
    else:
        raw = copy.deepcopy(RAW)
        change(raw)
        _write(tmp_path, raw)
    out, predictions = tmp_path / "ckpt", tmp_path / "predictions.parquet"
    argv = [
        "train", "--model", "lstm", "--task", "mortality", "--cohort", "matched",
        "--extract", str(tmp_path / "extract"), "--features", str(tmp_path / "features"),
        "--images", str(tmp_path / "images"), "--out", str(out),
        "--predictions", str(predictions), "--curves", str(tmp_path / "curves.csv"),
        "--params", str(path),
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "ehrcxr.cli", *argv],
        capture_output=True,
        text=True,
        env=_cli_env(),
        cwd=tmp_path,
    )
    seconds = time.perf_counter() - start
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("ehrcxr train: error: "), done.stderr
    assert expected in lines[0] and "Traceback" not in done.stderr, lines[0]
    assert done.stdout == ""
    assert seconds < 3.0, seconds
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_a_committed_schema_file_ships_with_the_package() -> None:
    """The schema is package data (pyproject's package-data names it) beside params.py."""
    import tomllib

    assert (
        params_mod.SCHEMA_FILE.is_file()
        and params_mod.SCHEMA_FILE.parent == Path(params_mod.__file__).parent
    )
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert params_mod.SCHEMA_FILE.name in pyproject["tool"]["setuptools"]["package-data"]["ehrcxr"]
