"""Results appended to a JSON-lines file, one record per evaluation, so that batch
jobs can collect the numbers of many runs into one table, and read back into the
paper's tables (``rcdm evaluate table``)."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

from rcdm_cli import __version__
from rcdm_cli.errors import RcdmError, UsageError


def append_result(path: str | Path | None, record: dict[str, Any]) -> dict[str, Any]:
    record = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rcdm_version": __version__,
        **record,
    }
    if path is not None:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps(record) + "\n"
            # one write of one line: concurrent jobs appending to the same file do not interleave
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            raise RcdmError(f"could not append to {path}: {exc.strerror or exc}") from None
    return record


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a JSON-lines results file, in order."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such results file: {path}")
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RcdmError(f"could not read {path}: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RcdmError(f"{path}, line {number}: not a JSON record ({exc.msg})") from None
        if isinstance(record, dict):
            records.append(record)
    return records


def _count(value: Any) -> int | None:
    """A count recorded as a number (or, by older versions, as the list it counts)."""
    if isinstance(value, list):
        return len(value)
    return value if isinstance(value, int) else None


def rank_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's faithfulness table: one row per encoder, layer, checkpoint and
    similarity, the latest record winning, in the order they first appear."""
    rows: dict[tuple, dict[str, Any]] = {}
    for r in records:
        if r.get("metric") != "rank":
            continue
        checkpoint = (r.get("checkpoint") or {}).get("spec")
        key = (r.get("encoder"), r.get("layer"), checkpoint, r.get("similarity", "cosine"))
        row = {
            "encoder": r.get("encoder"), "layer": r.get("layer"), "checkpoint": checkpoint,
            "similarity": r.get("similarity", "cosine"), "images": _count(r.get("images")),
            "samples_per_image": r.get("samples_per_image"),
        }
        for name in ("mean_rank", "mrr", "top1", "top5", "chance_mean_rank", "chance_mrr", "chance_top1", "chance_top5"):
            row[name] = r.get(name)
        if key in rows:
            rows[key].update(row)
        else:
            rows[key] = row
    return list(rows.values())


def probe_rows(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The linear-probe table: one row per encoder and weights, one validation top-1
    column per layer (trunk against head), the latest record of each layer winning."""
    rows: dict[tuple, dict[str, Any]] = {}
    layers: list[str] = []
    for r in records:
        if r.get("metric") != "probe":
            continue
        key = (r.get("encoder"), r.get("weights"))
        row = rows.setdefault(key, {"encoder": r.get("encoder"), "weights": r.get("weights"), "classes": None, "val_top1": {}})
        row["classes"] = len(r.get("classes") or []) or row["classes"]
        for layer, result in (r.get("layers") or {}).items():
            if layer not in layers:
                layers.append(layer)
            row["val_top1"][layer] = ((result or {}).get("val") or {}).get("top1")
    return list(rows.values()), layers


def attribute_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The attribute records, one per encoder, layer and checkpoint, the latest
    winning, in the order they first appear."""
    rows: dict[tuple, dict[str, Any]] = {}
    for r in records:
        if r.get("metric") != "attributes" or not isinstance(r.get("attributes"), dict):
            continue
        key = (r.get("encoder"), r.get("layer"), (r.get("checkpoint") or {}).get("spec"))
        if key in rows:
            rows[key] = {**r, "_order": rows[key]["_order"]}
        else:
            rows[key] = {**r, "_order": len(rows)}
    ordered = sorted(rows.values(), key=lambda row: row["_order"])
    return [{k: v for k, v in row.items() if k != "_order"} for row in ordered]
