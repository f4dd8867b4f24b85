"""The data folders a training command reads (``train``, ``tune``, ``bench-train``): one set of
arguments, and one check that they exist before anything is trained or written."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ehrcxr.data.datamodule import DataPaths


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--extract", default="data/extract", help="folder of `ehrcxr extract`")
    parser.add_argument("--features", default="data/features", help="folder of `ehrcxr featurize`")
    parser.add_argument("--images", default="data/images", help="folder of `ehrcxr cache-images`")


def data_paths(args: argparse.Namespace) -> DataPaths:
    """The folders of ``add_data_arguments``; a missing one is one line naming the stage that
    writes it."""
    from pathlib import Path

    from ehrcxr.data.datamodule import DataPaths
    from ehrcxr.io import require_inputs

    require_inputs(args.extract, made_by="ehrcxr extract")
    require_inputs(args.features, made_by="ehrcxr featurize")
    require_inputs(args.images, made_by="ehrcxr cache-images")
    return DataPaths(Path(args.extract), Path(args.features), Path(args.images))
