"""ImageCache and qemu_img against real qemu-img and real files (no mocks)."""

from __future__ import annotations

import fcntl
import hashlib
import http.server
import multiprocessing
import os
import socket
import subprocess
import threading
import time

import pytest

from spawnflow.exceptions import (
    HostError,
    ImageChecksumMismatch,
    ImageError,
    ImageUnacceptable,
    ImageUnreachable,
)
from spawnflow.virt import qemu_img
from spawnflow.virt.images import FetchResult, ImageCache

MiB = 1024 * 1024


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def qcow2_image(tmp_path) -> bytes:
    """Bytes of a small valid qcow2 image without backing file."""
    path = tmp_path / "src.qcow2"
    qemu_img.create(str(path), "qcow2", 4 * MiB)
    return path.read_bytes()


@pytest.fixture
def raw_image() -> bytes:
    return b"\x01\x02bootsector" + b"\0" * (MiB - 12)


@pytest.fixture
def cache(tmp_path) -> ImageCache:
    return ImageCache(str(tmp_path / "_base"), str(tmp_path / "locks"), http_timeout=5.0)


class _Server:
    """Serves ``files`` (path -> bytes) over HTTP and counts GETs per path."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.gets: dict[str, int] = {}
        self.delay = 0.0
        self._mutex = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                with server._mutex:
                    server.gets[self.path] = server.gets.get(self.path, 0) + 1
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                time.sleep(server.delay)  # widen the window for concurrent fetches
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    # A proxy configured in the environment must not intercept 127.0.0.1.
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    srv = _Server()
    yield srv
    srv.close()


def _no_leftovers(cache: ImageCache, image_id: str) -> None:
    final = cache.cache_path(image_id)
    assert not os.path.exists(final)
    assert not os.path.exists(final + ".part")
    assert [n for n in os.listdir(cache.base_dir) if n.endswith(".part")] == []


# --- fetch -----------------------------------------------------------------


def test_cache_path_is_sha1_of_image_id(cache):
    expected = hashlib.sha1(b"img-1").hexdigest()
    assert cache.cache_path("img-1") == os.path.join(cache.base_dir, expected)


def test_fetch_from_local_path(cache, tmp_path, qcow2_image):
    src = tmp_path / "image.qcow2"
    src.write_bytes(qcow2_image)
    result = cache.fetch("img", str(src), _sha(qcow2_image), "qcow2")
    assert result == FetchResult(cache.cache_path("img"), True)
    assert _read(result.path) == qcow2_image
    assert _read(result.path + ".sha256").decode().strip() == _sha(qcow2_image)
    again = cache.fetch("img", str(src), _sha(qcow2_image), "qcow2")
    assert again == FetchResult(result.path, False)


def test_fetch_from_file_url(cache, tmp_path, raw_image):
    src = tmp_path / "dir with space" / "image.raw"
    src.parent.mkdir()
    src.write_bytes(raw_image)
    result = cache.fetch("img", src.as_uri(), None, "raw")
    assert result.downloaded
    assert _read(result.path) == raw_image


def test_fetch_from_http(cache, server, qcow2_image):
    server.files["/img.qcow2"] = qcow2_image
    result = cache.fetch("img", server.base + "/img.qcow2", _sha(qcow2_image), "qcow2")
    assert result.downloaded
    assert _read(result.path) == qcow2_image
    assert qemu_img.info(result.path).format == "qcow2"


def test_checksum_mismatch_leaves_nothing(cache, server, qcow2_image):
    server.files["/img.qcow2"] = qcow2_image
    wrong = "0" * 64
    with pytest.raises(ImageChecksumMismatch) as err:
        cache.fetch("img", server.base + "/img.qcow2", wrong, "qcow2")
    assert wrong in str(err.value) and _sha(qcow2_image) in str(err.value)
    _no_leftovers(cache, "img")
    assert not os.path.exists(cache.cache_path("img") + ".sha256")


def test_cached_image_checked_against_sidecar(cache, tmp_path, raw_image):
    src = tmp_path / "image.raw"
    src.write_bytes(raw_image)
    cache.fetch("img", str(src), None, "raw")
    with pytest.raises(ImageChecksumMismatch):
        cache.fetch("img", str(src), "f" * 64, "raw")
    # The cached file is kept: running instances may use it as a backing file.
    assert _read(cache.cache_path("img")) == raw_image
    assert not cache.fetch("img", str(src), _sha(raw_image).upper(), "raw").downloaded


def test_cached_image_without_sidecar_is_hashed(cache, tmp_path, raw_image):
    src = tmp_path / "image.raw"
    src.write_bytes(raw_image)
    path = cache.fetch("img", str(src), None, "raw").path
    os.unlink(path + ".sha256")
    assert not cache.fetch("img", str(src), _sha(raw_image), "raw").downloaded
    assert _read(path + ".sha256").decode().strip() == _sha(raw_image)


def test_unreachable_missing_path(cache, tmp_path):
    missing = str(tmp_path / "nope.qcow2")
    with pytest.raises(ImageUnreachable, match="nope.qcow2"):
        cache.fetch("img", missing, None, "qcow2")
    _no_leftovers(cache, "img")


def test_unreachable_http_404(cache, server):
    url = server.base + "/missing"
    with pytest.raises(ImageUnreachable, match="404") as err:
        cache.fetch("img", url, None, "qcow2")
    assert url in str(err.value)
    _no_leftovers(cache, "img")


def test_unreachable_closed_port(cache, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: connection refused
    url = f"http://127.0.0.1:{port}/img"
    with pytest.raises(ImageUnreachable, match=f"127.0.0.1:{port}"):
        cache.fetch("img", url, None, "qcow2")
    _no_leftovers(cache, "img")


def test_unreachable_timeout(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    cache = ImageCache(str(tmp_path / "b"), str(tmp_path / "l"), http_timeout=0.3)
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/img"
        with pytest.raises(ImageUnreachable, match="127.0.0.1"):
            cache.fetch("img", url, None, "qcow2")
    _no_leftovers(cache, "img")


def test_qcow2_with_backing_file_refused(cache, tmp_path):
    base = tmp_path / "host-secret.raw"
    qemu_img.create(str(base), "raw", MiB)
    src = tmp_path / "evil.qcow2"
    qemu_img.create_overlay(str(src), str(base), "raw")
    with pytest.raises(ImageUnacceptable, match="backing file"):
        cache.fetch("img", str(src), None, "qcow2")
    _no_leftovers(cache, "img")


def test_qcow2_with_data_file_refused(cache, tmp_path):
    src = tmp_path / "evil.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path}/d.raw",
         str(src), "1M"],
        check=True,
    )
    with pytest.raises(ImageUnacceptable, match="data file"):
        cache.fetch("img", str(src), None, "qcow2")
    _no_leftovers(cache, "img")


def test_raw_declared_qcow2_refused(cache, tmp_path, raw_image):
    src = tmp_path / "image.raw"
    src.write_bytes(raw_image)
    with pytest.raises(ImageUnacceptable, match="declared qcow2.*detects format raw"):
        cache.fetch("img", str(src), None, "qcow2")
    _no_leftovers(cache, "img")


def test_qcow2_declared_raw_refused(cache, tmp_path, qcow2_image):
    # Accepting this as raw would let the guest see (and qemu follow) qcow2 metadata.
    src = tmp_path / "image.qcow2"
    src.write_bytes(qcow2_image)
    with pytest.raises(ImageUnacceptable, match="declared raw"):
        cache.fetch("img", str(src), None, "raw")
    _no_leftovers(cache, "img")


def test_unknown_disk_format_refused(cache, tmp_path, raw_image):
    src = tmp_path / "image.raw"
    src.write_bytes(raw_image)
    with pytest.raises(ImageUnacceptable, match="vmdk"):
        cache.fetch("img", str(src), None, "vmdk")


def test_concurrent_threads_download_once(cache, server, qcow2_image):
    server.files["/img"] = qcow2_image
    server.delay = 0.3
    barrier = threading.Barrier(8)
    results: list[FetchResult] = []
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            results.append(cache.fetch("img", server.base + "/img", _sha(qcow2_image), "qcow2"))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert server.gets["/img"] == 1
    assert sorted(r.downloaded for r in results) == [False] * 7 + [True]
    assert _read(cache.cache_path("img")) == qcow2_image


def _fetch_in_process(base_dir, lock_dir, url, sha, start, queue) -> None:
    start.wait()
    result = ImageCache(base_dir, lock_dir).fetch("img", url, sha, "qcow2")
    queue.put(result.downloaded)


def test_concurrent_processes_download_once(cache, server, qcow2_image):
    server.files["/img"] = qcow2_image
    server.delay = 0.5
    ctx = multiprocessing.get_context("spawn")  # no fork of a threaded test process
    start, queue = ctx.Event(), ctx.Queue()
    args = (cache.base_dir, cache.lock_dir, server.base + "/img", _sha(qcow2_image), start, queue)
    procs = [ctx.Process(target=_fetch_in_process, args=args) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    outcomes = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert outcomes == [False, True]
    assert server.gets["/img"] == 1


# --- clean_partial ---------------------------------------------------------


def test_clean_partial_skips_parts_whose_lock_is_held(cache):
    os.makedirs(cache.base_dir)
    os.makedirs(cache.lock_dir)
    stale = cache.cache_path("crashed") + ".part"
    stale_sidecar = cache.cache_path("crashed") + ".sha256.part"
    busy = cache.cache_path("busy") + ".part"
    for path in (stale, stale_sidecar, busy):
        with open(path, "wb") as f:
            f.write(b"half")
    busy_lock = os.path.join(cache.lock_dir, os.path.basename(cache.cache_path("busy")) + ".lock")
    fd = os.open(busy_lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a fetch in progress would
        assert sorted(cache.clean_partial()) == sorted([stale, stale_sidecar])
        assert os.path.exists(busy)
    finally:
        os.close(fd)
    assert cache.clean_partial() == [busy]


def test_clean_partial_without_base_dir(cache):
    assert cache.clean_partial() == []


# --- instance disks --------------------------------------------------------


@pytest.fixture
def qcow2_base(cache, tmp_path, qcow2_image) -> str:
    src = tmp_path / "image.qcow2"
    src.write_bytes(qcow2_image)
    return cache.fetch("img", str(src), None, "qcow2").path


def test_overlay_records_backing_file_and_format(cache, tmp_path, qcow2_base):
    disk = str(tmp_path / "disk")
    assert cache.create_instance_disk(qcow2_base, disk, "qcow2", None) is True
    info = qemu_img.info(disk)
    assert (info.format, info.backing_file, info.backing_format) == ("qcow2", qcow2_base, "qcow2")
    assert info.virtual_size == 4 * MiB
    assert not os.path.exists(disk + ".tmp")


def test_overlay_of_raw_base_uses_raw_backing_format(cache, tmp_path, raw_image):
    src = tmp_path / "image.raw"
    src.write_bytes(raw_image)
    base = cache.fetch("raw-img", str(src), None, "raw").path
    disk = str(tmp_path / "disk")
    assert cache.create_instance_disk(base, disk, "qcow2", None)
    assert qemu_img.info(disk).backing_format == "raw"


def test_raw_disk_is_a_grown_copy(cache, tmp_path, raw_image):
    src = tmp_path / "image.raw"
    src.write_bytes(raw_image)
    base = cache.fetch("raw-img", str(src), None, "raw").path
    disk = str(tmp_path / "disk.raw")
    assert cache.create_instance_disk(base, disk, "raw", 8 * MiB)
    info = qemu_img.info(disk)
    assert (info.format, info.virtual_size, info.backing_file) == ("raw", 8 * MiB, None)
    assert _read(disk)[: len(raw_image)] == raw_image


def test_resize_to_root_gb_grows(cache, tmp_path, qcow2_base):
    disk = str(tmp_path / "disk")
    cache.create_instance_disk(qcow2_base, disk, "qcow2", 1024 * MiB)
    assert qemu_img.info(disk).virtual_size == 1024 * MiB
    assert qemu_img.info(qcow2_base).virtual_size == 4 * MiB  # base untouched


def test_too_small_root_refused(cache, tmp_path, qcow2_base):
    disk = str(tmp_path / "disk")
    with pytest.raises(ImageUnacceptable, match="root_gb"):
        cache.create_instance_disk(qcow2_base, disk, "qcow2", MiB)
    assert not os.path.exists(disk) and not os.path.exists(disk + ".tmp")


def test_create_instance_disk_is_idempotent(cache, tmp_path, qcow2_base):
    disk = str(tmp_path / "disk")
    assert cache.create_instance_disk(qcow2_base, disk, "qcow2", 8 * MiB) is True
    before = os.stat(disk)
    assert cache.create_instance_disk(qcow2_base, disk, "qcow2", 8 * MiB) is False
    after = os.stat(disk)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_create_instance_disk_replaces_stale_tmp(cache, tmp_path, qcow2_base):
    disk = str(tmp_path / "disk")
    with open(disk + ".tmp", "wb") as f:
        f.write(b"half-made by a crash")
    assert cache.create_instance_disk(qcow2_base, disk, "qcow2", None) is True
    assert qemu_img.info(disk).backing_file == qcow2_base


def test_existing_foreign_disk_not_touched(cache, tmp_path, qcow2_base):
    disk = tmp_path / "disk"
    disk.write_bytes(b"someone else's data")
    with pytest.raises(ImageError, match="refusing"):
        cache.create_instance_disk(qcow2_base, str(disk), "qcow2", None)
    assert disk.read_bytes() == b"someone else's data"


def test_remove_instance_disk_tolerates_gone(cache, tmp_path, qcow2_base):
    disk = str(tmp_path / "disk")
    cache.create_instance_disk(qcow2_base, disk, "qcow2", None)
    with open(disk + ".tmp", "wb"):
        pass
    assert cache.remove_instance_disk(disk) is True
    assert not os.path.exists(disk) and not os.path.exists(disk + ".tmp")
    assert cache.remove_instance_disk(disk) is False


# --- qemu_img --------------------------------------------------------------


def test_resize_refuses_to_shrink(tmp_path):
    path = str(tmp_path / "d.qcow2")
    qemu_img.create(path, "qcow2", 8 * MiB)
    with pytest.raises(ImageError, match="shrink"):
        qemu_img.resize(path, 4 * MiB, "qcow2")
    qemu_img.resize(path, 8 * MiB, "qcow2")  # same size: no-op
    assert qemu_img.info(path).virtual_size == 8 * MiB


def test_copy_raw_is_sparse(tmp_path):
    src, dst = str(tmp_path / "a.raw"), str(tmp_path / "b.raw")
    with open(src, "wb") as f:
        f.write(b"data")
        f.truncate(64 * MiB)
    qemu_img.copy_raw(src, dst)
    assert _read(dst)[:4] == b"data"
    assert os.path.getsize(dst) == 64 * MiB
    assert os.stat(dst).st_blocks * 512 < 8 * MiB


def test_qemu_img_error_carries_stderr(tmp_path):
    missing = str(tmp_path / "missing.qcow2")
    with pytest.raises(HostError, match="missing.qcow2.*(No such file|Could not open)"):
        qemu_img.info(missing)


def test_create_luks_passphrase_only_in_file(tmp_path, monkeypatch):
    passphrase = "correct horse battery staple"
    pfile = tmp_path / "pass"
    pfile.write_text(passphrase)
    pfile.chmod(0o600)
    seen: list[list[str]] = []
    real_run = subprocess.run

    def spy(argv, *args, **kwargs):  # records argv, still runs the real qemu-img
        seen.append(list(argv))
        return real_run(argv, *args, **kwargs)

    monkeypatch.setattr(qemu_img.subprocess, "run", spy)
    path = str(tmp_path / "vol.luks")
    qemu_img.create_luks(path, 16 * MiB, str(pfile), iter_time_ms=10)
    info = qemu_img.info(path)
    assert (info.format, info.encrypted, info.virtual_size) == ("luks", True, 16 * MiB)
    create_argv = seen[0]
    assert f"secret,id=sec0,file={pfile}" in create_argv
    assert all(passphrase not in arg for argv in seen for arg in argv)
