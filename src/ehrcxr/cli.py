"""The ``ehrcxr`` command: one subcommand per pipeline step (see ``ehrcxr --help``)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
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


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (``ehrcxr train: error: …``) and exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# Exit status of a run stopped by Ctrl-C: 128 + SIGINT, what shells and DVC expect.
INTERRUPTED = 130


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; with ``only``, just that subcommand's module is imported (a stage
    imports what it uses and nothing else: its DVC dependencies list exactly those files)."""
    parser = _Parser(prog="ehrcxr", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ehrcxr {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
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
    ``EHRCXR_WARM=0`` turns it off); an in-process call runs in this process.

    Arguments and the whole params file are checked first, in this process (argparse and YAML
    only: well under a second), so a bad value costs no heavy import and writes nothing. What
    the user can fix — a bad input, value or database — ends in one line and exit 2
    (:class:`~ehrcxr.errors.EhrcxrError`, or an operating-system error naming its file); Ctrl-C in
    one line and exit 130; anything else is a bug and keeps its traceback.
    """
    argv_given = argv is not None
    warm = not argv_given if warm is None else warm
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    name = f"ehrcxr {command}" if command in SUBCOMMANDS else "ehrcxr"
    interrupted = _Interrupted()
    try:
        args = build_parser(command if command in SUBCOMMANDS else None).parse_args(argv)
        name = f"ehrcxr {args.command}"
        if hasattr(args, "params"):
            from ehrcxr import params as params_mod

            params_mod.load(args.params)  # validated against the schema (params.py)
        if warm:
            from ehrcxr import warm as warm_server

            if warm_server.enabled(command):
                return warm_server.run(command, argv, lambda a: main(a, warm=False))
        args._stage.run(args)
    except EhrcxrError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder that cannot be read or written
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{name}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted; no output was replaced", file=sys.stderr)
        return INTERRUPTED
    except SystemExit as exc:
        # PyTorch Lightning answers Ctrl-C with its own shutdown and ``exit(1)``.
        if interrupted.seen and exc.code not in (0, None):
            print(f"{name}: interrupted; no output was replaced", file=sys.stderr)
            return INTERRUPTED
        raise
    finally:
        # As a command, the work is over (or failed) here: a Ctrl-C during the interpreter's
        # shutdown would only turn a finished run into a silent death by SIGINT.
        interrupted.restore(ignore=argv_given is False)
    return 0


class _Interrupted:
    """Notes a SIGINT (then raises KeyboardInterrupt, as Python's own handler does) unless the
    process ignores SIGINT (a background job): a library that catches the KeyboardInterrupt
    still leaves the note, so main can tell an interrupted run from a failed one."""

    def __init__(self) -> None:
        self.seen = False
        self.previous = signal.getsignal(signal.SIGINT)
        if self.previous is signal.default_int_handler:
            with contextlib.suppress(ValueError):  # not the main thread: leave it
                signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame) -> None:
        self.seen = True
        raise KeyboardInterrupt

    def restore(self, ignore: bool = False) -> None:
        """Put the previous handler back (``ignore``: ignore SIGINT from now on)."""
        if signal.getsignal(signal.SIGINT) == self._handle:
            signal.signal(signal.SIGINT, signal.SIG_IGN if ignore else self.previous)


if __name__ == "__main__":
    sys.exit(main())
