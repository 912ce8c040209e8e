"""SHA-256 of checkpoint files, remembered so a 1.7 GB file is hashed once.

Manifests record the hash of the weights that produced them. The cache lives in
``$RCDM_HOME/hashes.json`` and is keyed by the file's absolute path, size and
modification time, so any change to the file invalidates it.
"""

from __future__ import annotations

import json
from pathlib import Path

from rcdm_cli.download_cache import rcdm_home, sha256sum
from rcdm_cli.fileio import write_json


def file_sha256(path: str | Path) -> str:
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    cache_file = rcdm_home() / "hashes.json"
    try:
        cache = json.loads(cache_file.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = sha256sum(path)
    cache = {k: v for k, v in cache.items() if not k.startswith(f"{path}|")}
    cache[key] = digest
    try:
        write_json(cache_file, cache)
    except Exception:  # a read-only cache only costs a re-hash next time
        pass
    return digest
