"""Results appended to a JSON-lines file, one record per evaluation, so that batch
jobs can collect the numbers of many runs into one table."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

from rcdm_cli import __version__
from rcdm_cli.errors import RcdmError


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
