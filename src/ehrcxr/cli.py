"""The ``ehrcxr`` command: one subcommand per pipeline step (see ``ehrcxr --help``)."""

from __future__ import annotations

import argparse
import importlib
import sys

from ehrcxr import __version__
from ehrcxr.errors import EhrcxrError

# subcommand → (stage module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synthesize": (
        "ehrcxr.stages.synthesize",
        "write the synthetic MIMIC-IV + MIMIC-CXR-JPG source",
    ),
    "load-db": ("ehrcxr.stages.load_db", "copy a synthetic source into PostgreSQL"),
    "extract": ("ehrcxr.stages.extract", "cohort, labels, splits, images and hourly EHR features"),
    "featurize": ("ehrcxr.stages.featurize", "hourly features to the EHR tensor [N, 48, F + M]"),
    "cache-images": ("ehrcxr.stages.cache_images", "decode the matched films into one array"),
    "configure": (
        "ehrcxr.stages.configure",
        "resolve each grid stage's params and fingerprint its code (its one DVC dependency)",
    ),
    "tune": (
        "ehrcxr.stages.tune",
        "Bayesian hyperparameter search of one model, task and cohort (validation only)",
    ),
    "hyperparameters": (
        "ehrcxr.stages.hyperparameters",
        "each grid cell's model settings: paper defaults or its search's best",
    ),
    "train": ("ehrcxr.stages.train", "train one model on one task and cohort, write predictions"),
    "evaluate": ("ehrcxr.stages.evaluate", "compute every metric from a predictions file"),
    "statistics": (
        "ehrcxr.stages.statistics",
        "permutation tests: each multimodal model vs the best unimodal one",
    ),
    "report": ("ehrcxr.stages.report", "benchmark report: tables, figures and plot data"),
    "gate": ("ehrcxr.stages.gate", "fail when rerun metrics fall below the committed ones"),
    "bench-extract": ("ehrcxr.stages.bench_extract", "time extract + featurize on PostgreSQL"),
    "bench-train": (
        "ehrcxr.stages.bench_train",
        "per model: training and inference samples/s, input share of a step, peak memory",
    ),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; with ``only``, just that subcommand's module is imported (a stage
    imports what it uses and nothing else: its DVC dependencies list exactly those files)."""
    parser = argparse.ArgumentParser(prog="ehrcxr", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ehrcxr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text)
            continue
        stage = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=stage.__doc__)
        stage.add_arguments(p)
        p.set_defaults(_stage=stage)
    return parser


def main(argv: list[str] | None = None, warm: bool | None = None) -> int:
    """Run one subcommand. ``warm`` (default: only when run as the ``ehrcxr`` command, i.e.
    without ``argv``) sends the heavy subcommands to the warm interpreter (:mod:`ehrcxr.warm`;
    ``EHRCXR_WARM=0`` turns it off); an in-process call runs in this process."""
    warm = argv is None if warm is None else warm
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    if warm:
        from ehrcxr import warm as warm_server

        if warm_server.enabled(command):
            return warm_server.run(command, argv, lambda a: main(a, warm=False))
    args = build_parser(command if command in SUBCOMMANDS else None).parse_args(argv)
    try:
        args._stage.run(args)
    except EhrcxrError as exc:
        print(f"ehrcxr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
