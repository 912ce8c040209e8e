"""One run per output folder at a time.

Two runs started together with the same ``--out`` would both pass the "already
exists" checks and then write over each other; two training runs would mix their
configs, metrics and checkpoints. A command claims its folder with an exclusive
``flock`` on ``FOLDER/.rcdm.lock`` before it checks or writes anything there; a second
run fails at once, naming the holder. The kernel drops the lock when the holding
process ends, however it ends, so a crashed or killed run never leaves the folder
stuck. The file itself stays (empty of meaning once unlocked) and is ignored by the
checks that want a folder empty.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from rcdm_cli.errors import RcdmError

LOCK_NAME = ".rcdm.lock"

try:
    import fcntl
except ImportError:  # no flock (Windows): folders are not claimed
    fcntl = None

_held: list[tuple[int, Path, bool]] = []  # (descriptor, folder, whether this run created it)


def claim(folder: str | os.PathLike, command: str) -> None:
    """Claim ``folder`` (created if missing) for this process until
    :func:`release_all`, or fail naming the run that holds it."""
    if fcntl is None:
        return
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        return  # a file in the way, or no permission: the caller's checks name the problem
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 400, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RcdmError(f"{folder} is in use by another rcdm run ({holder}); wait for it to end or choose another --out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"rcdm {command}, pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
    _held.append((fd, folder, created))


def release_all() -> None:
    """Release every folder this process claimed; a folder the run created and left
    empty (it failed before writing) is removed again."""
    while _held:
        fd, folder, created = _held.pop()
        try:
            if created and [p.name for p in folder.iterdir()] == [LOCK_NAME]:
                (folder / LOCK_NAME).unlink()
                folder.rmdir()
        except OSError:
            pass
        finally:
            os.close(fd)


def holds_only_lock(folder: Path) -> bool:
    """Whether ``folder`` is empty but for a lock file (for the checks that want it empty)."""
    return all(p.name == LOCK_NAME for p in folder.iterdir())
