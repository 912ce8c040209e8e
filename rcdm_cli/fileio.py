"""Writing files so that a reader never sees half of one.

Everything is written to a temporary name in the destination's folder and renamed
into place once complete; an interrupted or failed write leaves the previous file (if
any) untouched and no temporary behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from rcdm_cli.errors import RcdmError, UsageError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise RcdmError(f"could not write {path}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file private (0600); give it the mode a plain open()
        # would, so that outputs are as readable as the user's umask allows.
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise RcdmError(f"could not write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def make_temp_dir(prefix: str, parent: Path) -> Path:
    """A new temporary folder in ``parent`` with the mode a plain mkdir would give it
    (mkdtemp makes it private, 0700, which would keep colleagues on a shared machine
    out of the checkpoints renamed from it)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(path, 0o777 & ~_umask())
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def probe_writable(folder: Path) -> None:
    """Fail now, naming the folder and the reason, if files cannot be created in
    ``folder`` or in the nearest existing folder above it (read-only, no permission, a
    full disk), rather than after the work whose results would be lost."""
    folder = Path(folder).absolute()
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return  # a file in the way is reported by the caller
    try:
        fd, probe = tempfile.mkstemp(prefix=".rcdm-write-check-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise RcdmError(f"cannot write into {existing}: {exc.strerror or exc}; choose another --out") from None


def check_writable(paths: Iterable[Path], overwrite: bool) -> None:
    """Refuse, before any work starts, to replace existing files without ``overwrite``,
    and outputs that could not be written at all (a folder in the way of a file, a
    file in the way of a folder, a folder where no file can be created). One pass
    over ``paths``, which may be a generator (a run of millions of outputs need not
    list them in memory)."""
    checked: set[Path] = set()
    probed: set[Path] = set()
    first_existing, existing = None, 0
    for p in paths:
        if p.is_dir():
            raise UsageError(f"{p} is a folder, where an output file would go")
        for parent in p.parents:
            if parent in checked:
                break
            checked.add(parent)
            if parent.exists():
                if not parent.is_dir():
                    raise UsageError(f"{parent} is a file, where an output folder would go; choose another --out")
                if parent not in probed:
                    probed.add(parent)
                    probe_writable(parent)
                break
        if not overwrite and p.exists():
            first_existing, existing = first_existing or p, existing + 1
    if existing > 1:
        raise UsageError(
            f"{first_existing} and {existing - 1} more output file(s) already exist; pass --overwrite to replace them"
        )
    if existing:
        raise UsageError(f"{first_existing} already exists; pass --overwrite to replace it")
