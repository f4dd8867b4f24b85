"""``ehrcxr bench-extract``: time and peak memory of extract + featurize on PostgreSQL at scale.

Starts a throwaway PostgreSQL on 127.0.0.1, loads a synthetic source into it (``--source``, or a
fresh one of ``--n-patients``), then runs ``ehrcxr extract`` and ``ehrcxr featurize`` as child
processes and reports each one's wall time and peak resident memory (``wait4``). Reproduce the
README's figures with ``make bench-extract`` (MIMIC size: 50,000 patients).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default=None, help="a synthetic source (default: synthesize)")
    parser.add_argument("--n-patients", type=int, default=50_000, help="size when synthesizing")
    parser.add_argument("--seed", type=int, default=0, help="seed when synthesizing")
    parser.add_argument("--params", default="params.yaml", help="params file for extract/featurize")
    parser.add_argument("--report", default=None, help="write the JSON report here too")


def _timed(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed")
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(usage.ru_maxrss / 1024**2, 2)}


def run(args: argparse.Namespace) -> None:
    from ehrcxr.data.load_database import load_into_postgres
    from ehrcxr.data.pg_cluster import TemporaryPostgres
    from ehrcxr.data.synthetic import synthesize

    report: dict[str, object] = {"cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="ehrcxr-bench-") as tmp:
        source = Path(args.source) if args.source else Path(tmp) / "synthetic"
        if not args.source:
            start = time.perf_counter()
            synthesize(source, n_patients=args.n_patients, seed=args.seed)
            report["synthesize_seconds"] = round(time.perf_counter() - start, 1)
        with TemporaryPostgres() as url:
            start = time.perf_counter()
            rows = load_into_postgres(source, url)
            report["load_db_seconds"] = round(time.perf_counter() - start, 1)
            report["icustays"] = rows["mimiciv_icu.icustays"]
            report["chartevents"] = rows["mimiciv_icu.chartevents"]
            env = {**os.environ, "MIMIC_DB_URL": url}
            exe = [sys.executable, "-m", "ehrcxr.cli"]
            out = Path(tmp) / "extract"
            report["extract"] = _timed(
                [
                    *exe,
                    "extract",
                    "--db-url",
                    url,
                    "--cxr-root",
                    str(source / "cxr"),
                    "--out",
                    str(out),
                    "--params",
                    args.params,
                ],
                env,
            )
            report["featurize"] = _timed(
                [
                    *exe,
                    "featurize",
                    "--extract",
                    str(out),
                    "--out",
                    str(Path(tmp) / "features"),
                    "--params",
                    args.params,
                ],
                env,
            )
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        Path(args.report).write_text(text + "\n")
