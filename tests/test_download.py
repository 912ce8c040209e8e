"""The download cache against a real HTTP server on localhost."""

import dataclasses
import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest
import torch

from rcdm_cli.checkpoint import released as released_mod
from rcdm_cli.checkpoint.resolve import resolve_checkpoint
from rcdm_cli.download_cache import download, rcdm_home, record_path
from rcdm_cli.errors import RcdmError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self):  # noqa: N802
        if self.path == "/short":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[:1000])
            self.wfile.flush()
            self.close_connection = True
            return
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Handler.files = {"/file.bin": PAYLOAD}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    # a short poll, so that shutdown() returns at once rather than after up to 0.5 s
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_streams_into_place_with_progress(server, tmp_path):
    seen = []
    dest = download(f"{server}/file.bin", tmp_path / "f.bin", progress=lambda d, t: seen.append((d, t)))
    assert dest.read_bytes() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".locks", "f.bin", "f.bin.verified.json"]


def test_cached_file_is_not_downloaded_again(server, tmp_path):
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"already here")
    assert download(f"{server}/file.bin", dest).read_bytes() == b"already here"


def test_a_cached_file_that_changed_since_its_download_is_refused(server, tmp_path):
    dest = download(f"{server}/file.bin", tmp_path / "f.bin")
    record = json.loads(record_path(dest).read_text())
    assert record["bytes"] == len(PAYLOAD) and record["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    dest.write_bytes(PAYLOAD[:1000])  # cut short after the download
    with pytest.raises(RcdmError, match=r"1000 bytes but 1048576 were downloaded: it is damaged; delete it and run again"):
        download(f"{server}/file.bin", dest)


def test_a_file_put_in_the_cache_by_hand_is_hashed_once(server, tmp_path, monkeypatch):
    import rcdm_cli.download_cache as download_mod

    dest = tmp_path / "f.bin"
    dest.write_bytes(PAYLOAD)
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    with pytest.raises(RcdmError, match="but the published file's starts with 0000: it is damaged or another file"):
        download(f"{server}/file.bin", dest, sha256_prefix="0000")
    assert download(f"{server}/file.bin", dest, sha256_prefix=digest[:8]) == dest
    monkeypatch.setattr(download_mod, "sha256sum", lambda path: pytest.fail("hashed twice"))
    assert download(f"{server}/file.bin", dest, sha256_prefix=digest[:8]) == dest


def test_cut_off_download_leaves_nothing_behind(server, tmp_path):
    with pytest.raises(RcdmError, match="cut off|stopped after"):
        download(f"{server}/short", tmp_path / "f.bin")
    assert [p.name for p in tmp_path.iterdir()] == [".locks"]


def test_checksum_mismatch_is_refused(server, tmp_path):
    with pytest.raises(RcdmError, match="SHA-256"):
        download(f"{server}/file.bin", tmp_path / "f.bin", sha256="0" * 64)
    assert [p.name for p in tmp_path.iterdir()] == [".locks"]
    good = hashlib.sha256(PAYLOAD).hexdigest()
    assert download(f"{server}/file.bin", tmp_path / "f.bin", sha256=good).exists()


def test_missing_file_error_names_url_and_destination(server, tmp_path):
    with pytest.raises(RcdmError) as info:
        download(f"{server}/nope.bin", tmp_path / "f.bin")
    assert f"{server}/nope.bin" in str(info.value) and str(tmp_path / "f.bin") in str(info.value)


def test_rcdm_home_default_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("RCDM_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert rcdm_home() == tmp_path / "rcdm"


def test_released_checkpoint_downloads_on_first_use(server, monkeypatch, tmp_path):
    """A released name resolves through the real download path; the file served here
    has the official layout (at the tiny size: the full 1.7 GB layout is covered by
    test_full_size_released_layout_loads_strictly)."""
    from helpers import make_tiny_state

    from rcdm_cli.diffusion import PRESETS

    buf_path = tmp_path / "served.pt"
    torch.save(make_tiny_state(256), buf_path)
    _Handler.files["/rcdm_ema_dino_head.pt"] = buf_path.read_bytes()
    monkeypatch.setattr(released_mod, "BASE_URL", server)
    tiny_meta = released_mod.ReleasedCheckpoint.meta

    def tiny(self):  # the table's architecture, shrunk to the tiny preset
        return dataclasses.replace(tiny_meta(self), unet=PRESETS["tiny"].unet.with_rep_dim(self.rep_dim))

    monkeypatch.setattr(released_mod.ReleasedCheckpoint, "meta", tiny)
    ckpt = resolve_checkpoint("released:dino-head")
    assert ckpt.path == rcdm_home() / "checkpoints" / "rcdm_ema_dino_head.pt"
    assert ckpt.meta.encoder.name == "dino" and ckpt.meta.encoder.layer == "head"
    assert set(ckpt.state) == set(make_tiny_state(256))


@pytest.mark.slow
def test_full_size_released_layout_loads_strictly(_isolated_home):
    """A file laid out exactly like rcdm_ema_dino_head.pt (420.8 M parameters), placed
    by hand where the offline error says, loads with the released metadata."""
    from rcdm_cli.diffusion import PRESETS, UNet
    from rcdm_cli.pipeline.model import RCDMModel

    with torch.device("meta"):
        shapes = UNet(PRESETS["rcdm-128"].unet.with_rep_dim(256)).state_dict()
    dest = Path(_isolated_home) / "checkpoints" / "rcdm_ema_dino_head.pt"
    dest.parent.mkdir(parents=True)
    torch.save({k: torch.full(v.shape, 0.01) for k, v in shapes.items()}, dest)
    ckpt = resolve_checkpoint("released:dino-head")
    assert ckpt.meta.rep_dim == 256 and ckpt.meta.image_size == 128
    model = RCDMModel.from_checkpoint(ckpt)
    assert sum(p.numel() for p in model.unet.parameters()) == 420768774
    dest.unlink()


def test_a_record_in_another_shape_counts_as_none(server, tmp_path):
    dest = tmp_path / "f.bin"
    dest.write_bytes(PAYLOAD)
    record_path(dest).write_text('{"verified": "abc"}')
    assert download(f"{server}/file.bin", dest, sha256_prefix=hashlib.sha256(PAYLOAD).hexdigest()[:8]) == dest
    assert json.loads(record_path(dest).read_text())["bytes"] == len(PAYLOAD)


def test_processes_sharing_a_cache_download_a_file_once(tmp_path):
    """A batch array starting together: one job downloads, the others wait for it and
    use its copy; nobody writes into another's temporary file."""
    requests = []
    release = threading.Event()

    class Slow(_Handler):
        def do_GET(self):  # noqa: N802
            requests.append(self.path)
            release.wait(10)
            super().do_GET()

    _Handler.files = {"/big.bin": PAYLOAD}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/big.bin"
    dest = tmp_path / "cache" / "big.bin"
    results, errors = [], []

    def job():
        try:
            results.append(download(url, dest, sha256=hashlib.sha256(PAYLOAD).hexdigest()))
        except Exception as exc:  # reported below
            errors.append(exc)

    jobs = [threading.Thread(target=job) for _ in range(4)]
    for j in jobs:
        j.start()
    while not requests:  # the first job is downloading; the others are waiting on the lock
        threading.Event().wait(0.01)
    threading.Event().wait(0.3)
    release.set()
    for j in jobs:
        j.join(30)
    httpd.shutdown()
    assert not errors and results == [dest] * 4
    assert requests == ["/big.bin"] and dest.read_bytes() == PAYLOAD
    assert not list(dest.parent.glob("*.part"))


def test_a_killed_download_leaves_nothing_for_long(server, tmp_path):
    """A job killed mid-download leaves its temporary file; the next download of that
    file, holding the lock, removes it."""
    stale = tmp_path / "f.bin.12345-678.part"
    stale.write_bytes(b"half a file")
    other = tmp_path / "g.bin.1-2.part"
    other.write_bytes(b"another file's")
    download(f"{server}/file.bin", tmp_path / "f.bin")
    assert not stale.exists() and other.exists()
