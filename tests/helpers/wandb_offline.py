"""Read an offline W&B run back (the `.wandb` record log) without syncing it: history rows and media files.

The file is a LevelDB-style log (Lightning and W&B write it; W&B's own reader is not public): a 7-byte header
(":W&B", magic, version), then 32 KiB blocks of records [crc32c u32][length u16][type u8][data], where a record
that does not fit its block is split FIRST/MIDDLE/LAST. Each payload is a protobuf `Record`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_payloads(path: Path) -> list[bytes]:
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run log (no ':W&B' header)")
    pos, out, pending = HEADER, [], b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer: zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            out.append(pending + chunk)
        elif kind == 0 and length == 0:  # zero padding up to the end of the block
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
    return out


def find_run(wandb_dir: Path) -> Path:
    runs = sorted(Path(wandb_dir).glob("offline-run-*/run-*.wandb"))
    if not runs:
        raise FileNotFoundError(f"no offline W&B run under {wandb_dir}")
    return runs[-1]


def history(run_file: Path) -> list[dict]:
    """The logged history rows, each a dict of key -> value (JSON-decoded)."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for payload in read_payloads(run_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def media(run_file: Path) -> list[Path]:
    return sorted((Path(run_file).parent / "files" / "media").rglob("*.*"))
