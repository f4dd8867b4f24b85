"""``ehrcxr load-db``: copy an embedded synthetic source into a PostgreSQL database."""

from __future__ import annotations

import argparse
import json

from ehrcxr.data.database import URL_ENV, describe, resolve_url


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, help="directory written by `ehrcxr synthesize`")
    parser.add_argument(
        "--db-url",
        default=None,
        help=f"SQLAlchemy URL of the target PostgreSQL (default: ${URL_ENV})",
    )
    parser.add_argument("--replace", action="store_true", help="drop existing MIMIC schemas first")


def run(args: argparse.Namespace) -> None:
    from ehrcxr.data.load_database import load_into_postgres

    url = resolve_url(args.db_url)
    counts = load_into_postgres(args.source, url, replace=args.replace)
    print(json.dumps({"database": describe(url), "rows": counts}, sort_keys=True))
