"""The download cache for released weights.

Files land in ``$RCDM_HOME`` (default: ``$XDG_CACHE_HOME/rcdm``, i.e. ``~/.cache/rcdm``).
A download streams into ``<name>.part`` and is renamed into place only once its size
matches the server's Content-Length (and its SHA-256, when one is known), so an
interrupted download is never mistaken for a complete file. Beside it,
``<name>.verified.json`` records the size, modification time and SHA-256 of what
arrived: a cached file that has since changed (a copy cut short, a disk error) is
refused with the advice to delete it, and a file put there by hand is hashed once
against a published digest, not on every use. ``RCDM_OFFLINE=1`` forbids
any network access. When a file cannot be fetched, the error names the URL and the exact
path where a copy obtained elsewhere can be put.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import http.client
import json
import logging
import os
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterable, Iterator

from rcdm_cli import __version__
from rcdm_cli.errors import RcdmError

Progress = Callable[[int, int | None], None]  # (bytes so far, total or None)
_log = logging.getLogger("rcdm")  # shown by the CLI; silent for a library caller without handlers
_CHUNK = 1 << 20


def rcdm_home() -> Path:
    env = os.environ.get("RCDM_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "rcdm"


def cache_path(*parts: str) -> Path:
    return rcdm_home().joinpath(*parts)


def offline() -> bool:
    return os.environ.get("RCDM_OFFLINE", "").lower() in ("1", "true", "yes")


def check_offline(needed: Iterable[tuple[str, Path] | None]) -> None:
    """With RCDM_OFFLINE, before the first file is fetched: name every file a run
    needs (``(url, path)``; None for one it does not) that is not in the cache, in one
    error, rather than the first one now and the next after it has been fetched by
    hand. A single missing file is left to the download's own error, which says the
    same of it."""
    if not offline():
        return
    missing = [file for file in needed if file is not None and not Path(file[1]).exists()]
    if len(missing) > 1:
        listed = "; ".join(f"{url} -> {path}" for url, path in missing)
        raise RcdmError(
            f"{len(missing)} files are not in the cache and RCDM_OFFLINE is set; download them by other means and "
            f"put them in place: {listed}"
        )


def sha256sum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _manual_hint(url: str, dest: Path) -> str:
    return f"download {url} by other means and put it at {dest}"


def record_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".verified.json")


def _read_record(dest: Path) -> dict | None:
    try:
        record = json.loads(record_path(dest).read_text())
    except (OSError, ValueError):
        return None
    # a record in another shape (hand-edited, another tool's) is no record: the file
    # is then checked as one put in the cache by hand, not refused as damaged
    if not isinstance(record, dict) or not isinstance(record.get("bytes"), int):
        return None
    return record


def _write_record(dest: Path, url: str, digest: str) -> None:
    from rcdm_cli.fileio import write_json

    stat = dest.stat()
    try:
        write_json(record_path(dest), {"url": url, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest})
    except RcdmError:
        pass  # a cache shared read-only still serves the file; it is checked again next time


def _check_cached(url: str, dest: Path, sha256: str | None, sha256_prefix: str | None) -> None:
    """Refuse a cached file that is not what was downloaded, or not what was published.

    The file is hashed only when it has no record yet (put there by hand, or by torch
    hub) and a digest is published, or when it changed since its record was written."""
    record = _read_record(dest)
    stat = dest.stat()
    advice = f"delete it and run again to download it afresh, or {_manual_hint(url, dest)}"
    if record is not None and record.get("bytes") != stat.st_size:
        raise RcdmError(f"{dest} is {stat.st_size} bytes but {record.get('bytes')} were downloaded: it is damaged; {advice}")
    unchanged = record is not None and record.get("mtime_ns") == stat.st_mtime_ns and record.get("sha256")
    expected = sha256 or sha256_prefix
    if unchanged or (expected is None and (record is None or not record.get("sha256"))):
        digest = record.get("sha256") if record else None
    else:
        digest = sha256sum(dest)
    if record is not None and record.get("sha256") and digest != record["sha256"]:
        raise RcdmError(f"{dest} changed since it was downloaded (its SHA-256 is not the download's): it is damaged; {advice}")
    if expected is not None and not digest.startswith(expected):
        how = "starts with" if len(expected) < 64 else "is"
        raise RcdmError(
            f"{dest} has SHA-256 {digest}, but the published file's {how} {expected}: it is damaged or another file; {advice}"
        )
    if digest is not None and not unchanged:
        _write_record(dest, url, digest)


@contextlib.contextmanager
def _one_download_at_a_time(dest: Path) -> Iterator[bool]:
    """Among the processes that share a cache (a batch array starting together), one
    downloads a file while the others wait and then find it; yields whether this
    process holds the file's lock. Where there are no advisory locks (Windows, a file
    system that refuses them), each downloads on its own, into its own temporary
    file, and the identical copies replace one another atomically. The lock files
    stay (removing one would race with its next user), in a hidden ``.locks`` folder
    beside the file."""
    try:
        import fcntl
    except ImportError:
        yield False
        return
    try:
        locks = dest.parent / ".locks"
        locks.mkdir(exist_ok=True)
        handle = open(locks / (dest.name + ".lock"), "a")
    except OSError:
        yield False
        return
    with handle:
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                _log.info("waiting for another process that is downloading %s", dest.name)
                fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            yield False
            return
        yield True


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    sha256_prefix: str | None = None,
    progress: Progress | None = None,
    timeout: float = 30.0,
) -> Path:
    """Fetch ``url`` to ``dest`` unless a complete copy is already there.

    ``sha256`` is the file's full digest; ``sha256_prefix`` its first hex digits, as
    torch hub file names carry them. Either is checked after downloading.
    """
    if dest.exists():
        _check_cached(url, dest, sha256, sha256_prefix)
        return dest
    if offline():
        raise RcdmError(f"{dest} is not in the cache and RCDM_OFFLINE is set; " + _manual_hint(url, dest))
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RcdmError(f"could not create the cache folder {dest.parent}: {exc.strerror or exc}") from None
    with _one_download_at_a_time(dest) as exclusive:
        if dest.exists():  # another process fetched it while this one waited
            _check_cached(url, dest, sha256, sha256_prefix)
            return dest
        if exclusive:  # what a killed download left behind is nobody's now
            for stale in dest.parent.glob(f"{glob.escape(dest.name)}.*.part"):
                with contextlib.suppress(OSError):
                    stale.unlink()
        return _fetch(url, dest, sha256, sha256_prefix, progress, timeout)


def _fetch(url: str, dest: Path, sha256: str | None, sha256_prefix: str | None, progress: Progress | None, timeout: float) -> Path:
    _log.info("downloading %s to %s", url, dest)
    # a name of its own, so that concurrent downloads never write into one file
    part = dest.with_name(f"{dest.name}.{os.getpid()}-{threading.get_ident()}.part")
    request = urllib.request.Request(url, headers={"User-Agent": f"rcdm/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(part, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            digest = hashlib.sha256()
            while True:
                block = response.read(_CHUNK)
                if not block:
                    break
                out.write(block)
                digest.update(block)
                done += len(block)
                if progress:
                    progress(done, total)
        if total is not None and done != total:
            raise RcdmError(f"download of {url} stopped after {done} of {total} bytes; retry, or " + _manual_hint(url, dest))
        if sha256 and digest.hexdigest() != sha256:
            raise RcdmError(f"download of {url} has SHA-256 {digest.hexdigest()}, expected {sha256}")
        if sha256_prefix and not digest.hexdigest().startswith(sha256_prefix):
            raise RcdmError(f"download of {url} has SHA-256 {digest.hexdigest()}, expected {sha256_prefix}...")
        os.replace(part, dest)
        _write_record(dest, url, digest.hexdigest())
    except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RcdmError(f"could not download {url} ({reason}); " + _manual_hint(url, dest)) from None
    except http.client.HTTPException as exc:
        raise RcdmError(
            f"download of {url} was cut off ({type(exc).__name__}); retry, or " + _manual_hint(url, dest)
        ) from None
    except OSError as exc:
        raise RcdmError(f"could not write {dest}: {exc.strerror or exc}") from None
    finally:
        if part.exists():
            part.unlink()
    return dest

