"""Where the MIMIC data comes from: the embedded synthetic source or the user's database."""

from __future__ import annotations

import argparse
from pathlib import Path

from ehrcxr import params as params_mod
from ehrcxr.data.database import URL_ENV, resolve_url, sqlite_url
from ehrcxr.errors import EhrcxrError


def add_source_arguments(parser: argparse.ArgumentParser, database: bool = True) -> None:
    if database:
        parser.add_argument(
            "--db-url",
            default=None,
            help=f"SQLAlchemy URL of MIMIC-IV (default: the synthetic source when params.yaml says "
            f"source: synthetic, else ${URL_ENV})",
        )
    parser.add_argument("--cxr-root", default=None, help="MIMIC-CXR-JPG folder (metadata + files/)")
    parser.add_argument(
        "--synthetic", default="data/synthetic", help="synthetic source folder (source: synthetic)"
    )
    parser.add_argument("--params", default="params.yaml", help="params file")


def resolve(args: argparse.Namespace, params: dict) -> tuple[str | None, Path]:
    """(database URL, CXR root) for this run; explicit arguments win over params.yaml."""
    src = params_mod.source_params(params)
    synthetic = Path(args.synthetic)
    url = getattr(args, "db_url", None)
    if url is None and hasattr(args, "db_url"):
        url = (
            sqlite_url(synthetic / "mimiciv" / "mimiciv.sqlite")
            if src.source == "synthetic"
            else resolve_url(None)
        )
    if args.cxr_root:
        root = Path(args.cxr_root)
    elif src.source == "synthetic":
        root = synthetic / "cxr"
    elif src.cxr_root:
        root = Path(src.cxr_root)
    else:
        raise EhrcxrError("source: database needs --cxr-root or params.yaml database.cxr_root")
    return url, root
