"""What an offline W&B run holds, read from its ``.wandb`` file (a leveldb-style log of
protobuf records), without a server: its run record (name, group, job type, config) and its
history rows."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class OfflineRun:
    name: str = ""
    group: str = ""
    job_type: str = ""
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)


def _records(run_file: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunks = 32768, 7, []
    while pos + 7 <= len(data):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (length == 0 and kind == 0):
            pos += left
            continue
        chunks.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


def read_run(run_file: Path) -> OfflineRun:
    run = OfflineRun()
    for record in _records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.name, run.group, run.job_type = r.display_name, r.run_group, r.job_type
            for item in r.config.update:
                value = json.loads(item.value_json)
                # W&B wraps each config value as {"value": …}; keep the value
                run.config[item.key] = (
                    value.get("value", value) if isinstance(value, dict) else value
                )
        elif kind == "history":
            run.history.append(
                {
                    i.key or "/".join(i.nested_key): json.loads(i.value_json)
                    for i in record.history.item
                }
            )
    return run


def offline_runs(root: Path) -> list[tuple[Path, OfflineRun]]:
    """Every offline run under ``root``/wandb: (its folder, what it holds)."""
    return [
        (f.parent, read_run(f)) for f in sorted((root / "wandb").glob("offline-run-*/run-*.wandb"))
    ]
