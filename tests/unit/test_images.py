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
    ImageSourceRefused,
    ImageUnacceptable,
    ImageUnreachable,
)
from spawnflow.virt import qemu_img
from spawnflow.virt.image_fetch import FetchLimits
from spawnflow.virt.image_sources import AllowedSources
from spawnflow.virt.images import CachePolicy, FetchResult, ImageCache

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


def make_cache(tmp_path, *urls: str, **policy) -> ImageCache:
    """A cache under tmp_path that may read tmp_path and the given URL prefixes."""
    policy.setdefault("limits", FetchLimits(stall_timeout=5.0, retries=0))
    allowed = AllowedSources([str(tmp_path), *urls])
    return ImageCache(
        str(tmp_path / "_base"), str(tmp_path / "locks"), CachePolicy(allowed=allowed, **policy)
    )


@pytest.fixture
def cache(tmp_path) -> ImageCache:
    return make_cache(tmp_path)


@pytest.fixture
def http_cache(tmp_path, server) -> ImageCache:
    return make_cache(tmp_path, server.base + "/")


class _Server:
    """Serves ``files`` (path -> bytes) over HTTP and counts GETs per path."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.gets: dict[str, int] = {}
        self.delay = 0.0
        self._mutex = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                with server._mutex:
                    server.gets[path] = server.gets.get(path, 0) + 1
                body = server.files.get(path)
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


def _no_leftovers(cache: ImageCache) -> None:
    """Nothing in the cache directory: no entry, no part file."""
    assert not os.path.exists(cache.base_dir) or os.listdir(cache.base_dir) == []


# --- fetch -----------------------------------------------------------------


def test_entry_is_named_by_content_digest(cache, tmp_path, qcow2_image):
    src = tmp_path / "image.qcow2"
    src.write_bytes(qcow2_image)
    result = cache.fetch(str(src), _sha(qcow2_image), "qcow2", label="img")
    assert result == FetchResult(cache.entry_path(_sha(qcow2_image)), True)
    assert _read(result.path) == qcow2_image
    assert sorted(os.listdir(cache.base_dir)) == [_sha(qcow2_image)]
    again = cache.fetch(str(src), _sha(qcow2_image), "qcow2", label="other-label")
    assert again == FetchResult(result.path, False)


def test_cache_modes_not_readable_by_others(cache, tmp_path, raw_image):
    src = tmp_path / "image.raw"
    src.write_bytes(raw_image)
    path = cache.fetch(str(src), None, "raw").path
    group = cache.policy.cache_group
    entry, base = os.stat(path), os.stat(cache.base_dir)
    assert entry.st_mode & 0o007 == 0 and base.st_mode & 0o007 == 0
    assert (entry.st_mode & 0o777, base.st_mode & 0o777) == (0o600, 0o700)
    assert group is None
    # With the group libvirt runs guests as: readable by it, never by others.
    grouped = make_cache(tmp_path / "g", cache_group="libvirt-qemu")
    (tmp_path / "g").mkdir()
    src2 = tmp_path / "g" / "image.raw"
    src2.write_bytes(raw_image)
    path = grouped.fetch(str(src2), None, "raw").path
    import grp

    gid = grp.getgrnam("libvirt-qemu").gr_gid
    entry, base = os.stat(path), os.stat(grouped.base_dir)
    assert (entry.st_mode & 0o777, entry.st_gid) == (0o640, gid)
    assert (base.st_mode & 0o777, base.st_gid) == (0o750, gid)


def test_existing_world_readable_cache_dir_is_tightened(cache, tmp_path, raw_image):
    os.makedirs(cache.base_dir, mode=0o755)
    os.chmod(cache.base_dir, 0o755)
    src = tmp_path / "image.raw"
    src.write_bytes(raw_image)
    cache.fetch(str(src), None, "raw")
    assert os.stat(cache.base_dir).st_mode & 0o777 == 0o700


def test_fetch_from_file_url(cache, tmp_path, raw_image):
    src = tmp_path / "dir with space" / "image.raw"
    src.parent.mkdir()
    src.write_bytes(raw_image)
    result = cache.fetch(src.as_uri(), None, "raw")
    assert result.downloaded
    assert _read(result.path) == raw_image
    assert result.path == cache.entry_path(_sha(raw_image))


def test_fetch_from_http(http_cache, server, qcow2_image):
    server.files["/img.qcow2"] = qcow2_image
    result = http_cache.fetch(server.base + "/img.qcow2", _sha(qcow2_image), "qcow2")
    assert result.downloaded
    assert _read(result.path) == qcow2_image
    assert qemu_img.info(result.path).format == "qcow2"


def test_checksum_given_reuses_entry_without_fetching(http_cache, server, qcow2_image):
    server.files["/a.qcow2"] = qcow2_image
    server.files["/b.qcow2"] = qcow2_image
    first = http_cache.fetch(server.base + "/a.qcow2", _sha(qcow2_image), "qcow2")
    # Another URL, another label, same digest: the entry is used, nothing fetched.
    second = http_cache.fetch(
        server.base + "/b.qcow2", _sha(qcow2_image), "qcow2", label="different-id"
    )
    assert (second.path, second.downloaded) == (first.path, False)
    assert server.gets == {"/a.qcow2": 1}


def test_changed_content_at_same_url_gets_a_new_entry(http_cache, server, raw_image):
    url = server.base + "/img.raw"
    server.files["/img.raw"] = raw_image
    old = http_cache.fetch(url, None, "raw", label="img")
    changed = b"\x07" + raw_image[1:]
    server.files["/img.raw"] = changed
    new = http_cache.fetch(url, None, "raw", label="img")  # same label, new content
    assert new.path != old.path and new.downloaded
    assert (_read(old.path), _read(new.path)) == (raw_image, changed)
    # The new checksum is served from the new entry; the old one stays for its users.
    assert not http_cache.fetch(url, _sha(changed), "raw").downloaded
    assert server.gets["/img.raw"] == 2


def test_same_content_without_checksum_keeps_one_entry(cache, tmp_path, raw_image):
    for name in ("a.raw", "b.raw"):
        (tmp_path / name).write_bytes(raw_image)
    first = cache.fetch(str(tmp_path / "a.raw"), None, "raw")
    second = cache.fetch(str(tmp_path / "b.raw"), None, "raw")
    assert (second.path, second.downloaded) == (first.path, False)
    assert sorted(os.listdir(cache.base_dir)) == [_sha(raw_image)]


def test_lookup_finds_only_cached_digests(cache, tmp_path, raw_image):
    assert cache.lookup(_sha(raw_image), "raw") is None
    src = tmp_path / "image.raw"
    src.write_bytes(raw_image)
    path = cache.fetch(str(src), None, "raw").path
    assert cache.lookup(_sha(raw_image), "raw") == FetchResult(path, False)
    with pytest.raises(ImageUnacceptable, match="declared qcow2"):
        cache.lookup(_sha(raw_image), "qcow2")


def test_checksum_mismatch_leaves_nothing(http_cache, server, qcow2_image):
    server.files["/img.qcow2"] = qcow2_image
    wrong = "0" * 64
    with pytest.raises(ImageChecksumMismatch) as err:
        http_cache.fetch(server.base + "/img.qcow2", wrong, "qcow2")
    assert wrong in str(err.value) and _sha(qcow2_image) in str(err.value)
    _no_leftovers(http_cache)


def test_errors_carry_the_masked_url_only(http_cache, server, qcow2_image):
    server.files["/img.qcow2"] = qcow2_image
    url = server.base + "/img.qcow2?X-Amz-Signature=topsecret#frag"
    with pytest.raises(ImageChecksumMismatch) as err:
        http_cache.fetch(url, "0" * 64, "qcow2")
    assert "topsecret" not in str(err.value) and "frag" not in str(err.value)
    assert "/img.qcow2?***" in str(err.value)
    with pytest.raises(ImageUnreachable) as err:
        http_cache.fetch(server.base + "/missing?token=topsecret", None, "qcow2")
    assert "topsecret" not in str(err.value) and "404" in str(err.value)


def test_unreachable_missing_path(cache, tmp_path):
    missing = str(tmp_path / "nope.qcow2")
    with pytest.raises(ImageSourceRefused, match=r"nope.qcow2' does not exist"):
        cache.fetch(missing, None, "qcow2")
    _no_leftovers(cache)


def test_source_outside_allowed_sources_refused_at_fetch(cache, tmp_path, raw_image):
    outside = tmp_path.parent / f"{tmp_path.name}-outside.raw"
    outside.write_bytes(raw_image)
    try:
        with pytest.raises(ImageSourceRefused, match=r"outside \[images\] allowed_sources"):
            cache.fetch(str(outside), None, "raw")
    finally:
        outside.unlink()
    _no_leftovers(cache)


def test_fifo_and_dev_zero_refused_at_once(cache, tmp_path):
    fifo = tmp_path / "image.fifo"
    os.mkfifo(fifo)
    (tmp_path / "zero.raw").symlink_to("/dev/zero")
    started = time.monotonic()
    with pytest.raises(ImageSourceRefused, match="not a regular file"):
        cache.fetch(str(fifo), None, "raw")
    with pytest.raises(ImageSourceRefused):
        cache.fetch(str(tmp_path / "zero.raw"), None, "raw")
    assert time.monotonic() - started < 5
    _no_leftovers(cache)


def test_unreachable_http_404(http_cache, server):
    url = server.base + "/missing"
    with pytest.raises(ImageUnreachable, match="404") as err:
        http_cache.fetch(url, None, "qcow2")
    assert url in str(err.value)
    _no_leftovers(http_cache)


def test_unreachable_closed_port(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: connection refused
    url = f"http://127.0.0.1:{port}/img"
    cache = make_cache(tmp_path, f"http://127.0.0.1:{port}/")
    with pytest.raises(ImageUnreachable, match=r"127.0.0.1.*refused"):
        cache.fetch(url, None, "qcow2")
    _no_leftovers(cache)


def test_unreachable_stall(tmp_path):
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        prefix = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        cache = make_cache(tmp_path, prefix, limits=FetchLimits(stall_timeout=0.5, retries=0))
        with pytest.raises(ImageUnreachable, match="stall"):
            cache.fetch(prefix + "img", None, "qcow2")
    _no_leftovers(cache)


def test_qcow2_with_backing_file_refused(cache, tmp_path):
    base = tmp_path / "host-secret.raw"
    qemu_img.create(str(base), "raw", MiB)
    src = tmp_path / "evil.qcow2"
    qemu_img.create_overlay(str(src), str(base), "raw")
    with pytest.raises(ImageUnacceptable, match="backing file"):
        cache.fetch(str(src), None, "qcow2")
    _no_leftovers(cache)


def test_qcow2_with_data_file_refused(cache, tmp_path):
    src = tmp_path / "evil.qcow2"
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            f"data_file={tmp_path}/d.raw",
            str(src),
            "1M",
        ],
        check=True,
    )
    with pytest.raises(ImageUnacceptable, match="data file"):
        cache.fetch(str(src), None, "qcow2")
    _no_leftovers(cache)


def test_raw_declared_qcow2_refused(cache, tmp_path, raw_image):
    src = tmp_path / "image.raw"
    src.write_bytes(raw_image)
    with pytest.raises(ImageUnacceptable, match=r"declared qcow2.*detects format raw"):
        cache.fetch(str(src), None, "qcow2")
    _no_leftovers(cache)


def test_qcow2_declared_raw_refused(cache, tmp_path, qcow2_image):
    # Accepting this as raw would let the guest see (and qemu follow) qcow2 metadata.
    src = tmp_path / "image.qcow2"
    src.write_bytes(qcow2_image)
    with pytest.raises(ImageUnacceptable, match="declared raw"):
        cache.fetch(str(src), None, "raw")
    _no_leftovers(cache)


def test_cached_entry_rechecked_for_declared_format(cache, tmp_path, qcow2_image):
    src = tmp_path / "image.qcow2"
    src.write_bytes(qcow2_image)
    cache.fetch(str(src), _sha(qcow2_image), "qcow2")
    with pytest.raises(ImageUnacceptable, match="declared raw"):
        cache.fetch(str(src), _sha(qcow2_image), "raw")


def test_unknown_disk_format_refused(cache, tmp_path, raw_image):
    src = tmp_path / "image.raw"
    src.write_bytes(raw_image)
    with pytest.raises(ImageUnacceptable, match="vmdk"):
        cache.fetch(str(src), None, "vmdk")


def test_max_size_and_reserved_space_for_local_files(tmp_path, raw_image):
    src = tmp_path / "image.raw"
    src.write_bytes(raw_image + raw_image)  # 2 MiB
    small = make_cache(tmp_path, max_bytes=MiB)
    with pytest.raises(ImageUnacceptable, match=r"max_size_gb"):
        small.fetch(str(src), None, "raw")
    _no_leftovers(small)
    full = make_cache(tmp_path, reserved_bytes=2**60)
    with pytest.raises(ImageError, match=r"reserved_disk_mb"):
        full.fetch(str(src), None, "raw")
    _no_leftovers(full)


def test_concurrent_threads_download_once(http_cache, server, qcow2_image):
    server.files["/img"] = qcow2_image
    server.delay = 0.3
    barrier = threading.Barrier(8)
    results: list[FetchResult] = []
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            results.append(http_cache.fetch(server.base + "/img", _sha(qcow2_image), "qcow2"))
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
    assert _read(http_cache.entry_path(_sha(qcow2_image))) == qcow2_image


def _fetch_in_process(base_dir, lock_dir, url, sha, start, queue) -> None:
    start.wait()
    policy = CachePolicy(allowed=AllowedSources([url.rsplit("/", 1)[0] + "/"]))
    result = ImageCache(base_dir, lock_dir, policy).fetch(url, sha, "qcow2")
    queue.put(result.downloaded)


def test_concurrent_processes_download_once(http_cache, server, qcow2_image):
    cache = http_cache
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
    stale = cache.entry_path("a" * 64) + ".part"
    stale_sidecar = cache.entry_path("a" * 64) + ".sha256.part"  # left by older versions
    busy = os.path.join(cache.base_dir, "src-" + "b" * 32 + ".part")
    for path in (stale, stale_sidecar, busy):
        with open(path, "wb") as f:
            f.write(b"half")
    busy_lock = os.path.join(cache.lock_dir, "src-" + "b" * 32 + ".lock")
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
    return cache.fetch(str(src), None, "qcow2").path


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
    base = cache.fetch(str(src), None, "raw").path
    disk = str(tmp_path / "disk")
    assert cache.create_instance_disk(base, disk, "qcow2", None)
    assert qemu_img.info(disk).backing_format == "raw"


def test_raw_disk_is_a_grown_copy(cache, tmp_path, raw_image):
    src = tmp_path / "image.raw"
    src.write_bytes(raw_image)
    base = cache.fetch(str(src), None, "raw").path
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
    with pytest.raises(HostError, match=r"missing.qcow2.*(No such file|Could not open)"):
        qemu_img.info(missing)


def test_create_luks_passphrase_only_in_file(tmp_path, monkeypatch):
    passphrase = "correct horse battery staple"
    pfile = tmp_path / "pass"
    pfile.write_text(passphrase)
    pfile.chmod(0o600)
    seen: list[list[str]] = []
    real_popen = subprocess.Popen

    def spy(argv, *args, **kwargs):  # records argv, still runs the real qemu-img
        seen.append(list(argv))
        return real_popen(argv, *args, **kwargs)

    monkeypatch.setattr(qemu_img.subprocess, "Popen", spy)
    path = str(tmp_path / "vol.luks")
    qemu_img.create_luks(path, 16 * MiB, str(pfile), iter_time_ms=10)
    info = qemu_img.info(path)
    assert (info.format, info.encrypted, info.virtual_size) == ("luks", True, 16 * MiB)
    create_argv = seen[0]
    assert f"secret,id=sec0,file={pfile}" in create_argv
    assert all(passphrase not in arg for argv in seen for arg in argv)


# --- the image step: a recovered build has only the masked URL -------------------


def _image_task(tmp_path, cache: ImageCache, source: str, checksum: str | None):
    from spawnflow.flows.context import BuildContext
    from spawnflow.flows.image import ImageStep
    from spawnflow.flows.spec import BuildSpec, parse_spec
    from tests.helpers import load_conf

    image = {"source": source, "disk_format": "raw"}
    if checksum:
        image["checksum"] = "sha256:" + checksum
    spec = parse_spec(
        {
            "instance": {"uuid": "6f1c2a7e-4a57-4f0e-9a49-3d0f7c0d1a01", "name": "vm"},
            "flavor": {"vcpus": 1, "memory_mb": 64, "root_gb": 0},
            "image": image,
        }
    )
    # What recovery does: the spec rebuilt from its persisted (redacted) form.
    recovered = BuildSpec.model_validate(spec.redacted())
    ctx = BuildContext(
        build_id="b1",
        spec=recovered,
        conf=load_conf(tmp_path),
        host=None,
        images=cache,
        firewall=None,
        events=None,
        instances_path=str(tmp_path / "instances"),
    )
    return ImageStep(ctx)


def test_recovered_build_with_masked_url_fails_clearly(http_cache, tmp_path, server, raw_image):
    server.files["/img.raw"] = raw_image
    task = _image_task(tmp_path, http_cache, server.base + "/img.raw?sig=s3cret", None)
    with pytest.raises(ImageUnreachable, match=r"not persisted.*start the build again") as err:
        task.execute()
    assert "s3cret" not in str(err.value)
    assert server.gets == {} and not (tmp_path / "instances").exists()


def test_recovered_build_with_masked_url_uses_the_checksum_entry(
    http_cache, tmp_path, server, raw_image
):
    server.files["/img.raw"] = raw_image
    url = server.base + "/img.raw?sig=s3cret"
    http_cache.fetch(url, _sha(raw_image), "raw")  # the first run fetched it
    result = _image_task(tmp_path, http_cache, url, _sha(raw_image)).execute()
    assert result["base_path"] == http_cache.entry_path(_sha(raw_image))
    assert server.gets == {"/img.raw": 1}
    instance_dir = os.stat(result["instance_dir"])
    assert instance_dir.st_mode & 0o007 == 0  # not readable by other users
