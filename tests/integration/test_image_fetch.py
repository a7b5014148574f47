"""Bounded image fetch against real HTTP(S) servers on loopback that misbehave.

Each server is a real ``http.server`` on 127.0.0.1 (HTTPS with a self-signed
certificate made by the ``openssl`` CLI); the allow list names it by its IP,
which is what lets a loopback server be used at all. The servers lie about
Content-Length, stall, redirect to refused places, fail transiently and serve
too much; the fetch must refuse or fail with one line naming the masked URL,
and leave no ``.part`` file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spawnflow.engine.agent import Agent
from spawnflow.exceptions import (
    ImageChecksumMismatch,
    ImageError,
    ImageFetchInterrupted,
    ImageSourceRefused,
    ImageUnacceptable,
    ImageUnreachable,
)
from spawnflow.virt.image_fetch import FetchLimits
from spawnflow.virt.image_sources import AllowedSources
from spawnflow.virt.images import CachePolicy, ImageCache
from tests.helpers import make_spec

MiB = 1024 * 1024
BODY = b"\x01\x02bootsector" + os.urandom(2 * MiB - 12)  # a raw image


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """One ``serve_<name>`` per misbehaving path; ``owner`` is the :class:`Server`."""

    protocol_version = "HTTP/1.0"  # one request per connection, EOF ends a body

    @property
    def owner(self) -> Server:
        return self.server.owner  # set by Server.__init__

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.owner.gets[path] = self.owner.gets.get(path, 0) + 1
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            getattr(self, "serve_" + path.rsplit("/", 1)[-1])()

    def _head(self, status: int = 200, length: int | None = None, **headers) -> None:
        self.send_response(status)
        if length is not None:
            self.send_header("Content-Length", str(length))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def serve_ok(self) -> None:
        self._head(200, len(BODY))
        self.wfile.write(BODY)

    def serve_short(self) -> None:  # announces more than it sends
        self._head(200, len(BODY) + MiB)
        self.wfile.write(BODY)

    def serve_long(self) -> None:  # announces less than it sends
        self._head(200, MiB)
        self.wfile.write(BODY)

    def serve_nolength(self) -> None:  # no Content-Length: ends at EOF
        self._head(200)
        self.wfile.write(BODY)

    def serve_stall(self) -> None:
        self._head(200, len(BODY))
        self.wfile.write(BODY[: 64 * 1024])
        self.wfile.flush()
        self.owner.release.wait(30)

    def serve_flaky(self) -> None:
        if self.owner.gets["/flaky"] == 1:
            self._head(503, 0)
        else:
            self.serve_ok()

    def serve_redirect(self) -> None:
        self._head(302, 0, Location=self.owner.redirects["/redirect"])

    def log_message(self, *args) -> None:
        pass


class Server:
    """A loopback HTTP(S) server whose paths misbehave on purpose; counts GETs."""

    def __init__(self, tls: tuple[str, str] | None = None) -> None:
        self.gets: dict[str, int] = {}
        self.redirects: dict[str, str] = {}
        self.release = threading.Event()  # ends a stall early at teardown
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.owner = self
        self.httpd.daemon_threads = True
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.base = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[str, str]:
    """A self-signed certificate for IP 127.0.0.1 (cert file, key file)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


@pytest.fixture
def tls_server(certificate) -> Iterator[Server]:
    srv = Server(tls=certificate)
    yield srv
    srv.close()


def cache_for(tmp_path: Path, *prefixes: str, **policy) -> ImageCache:
    limits = policy.pop("limits", FetchLimits(stall_timeout=5, retries=0))
    return ImageCache(
        str(tmp_path / "_base"),
        str(tmp_path / "locks"),
        CachePolicy(allowed=AllowedSources(list(prefixes)), limits=limits, **policy),
    )


def no_part(cache: ImageCache) -> None:
    assert (
        not os.path.isdir(cache.base_dir)
        or [n for n in os.listdir(cache.base_dir) if n.endswith(".part")] == []
    )


def test_plain_fetch_and_content_addressed_reuse(tmp_path, server):
    cache = cache_for(tmp_path, server.base + "/")
    first = cache.fetch(server.base + "/ok", _sha(BODY), "raw")
    assert first.downloaded and Path(first.path).read_bytes() == BODY
    again = cache.fetch(server.base + "/ok?X-Amz-Signature=other", _sha(BODY), "raw")
    assert (again.path, again.downloaded) == (first.path, False)
    assert server.gets == {"/ok": 1}  # same checksum: no second download


def test_content_length_shorter_than_body_is_retried_then_fails(tmp_path, server):
    cache = cache_for(tmp_path, server.base + "/", limits=FetchLimits(stall_timeout=5, retries=2))
    with pytest.raises(ImageUnreachable, match=r"/short'.*after 3 attempts"):
        cache.fetch(server.base + "/short", None, "raw")
    assert server.gets["/short"] == 3
    no_part(cache)
    assert os.listdir(cache.base_dir) == []


def test_body_longer_than_content_length_is_cut_at_the_announced_length(tmp_path, server):
    cache = cache_for(tmp_path, server.base + "/", max_bytes=int(1.5 * MiB))
    # What is read is what was announced, never more: the max size holds.
    entry = cache.fetch(server.base + "/long", None, "raw")
    assert Path(entry.path).read_bytes() == BODY[:MiB]
    with pytest.raises(ImageChecksumMismatch):
        cache.fetch(server.base + "/long", _sha(BODY), "raw")
    no_part(cache)


def test_max_size_by_content_length_and_while_streaming(tmp_path, server):
    cache = cache_for(tmp_path, server.base + "/", max_bytes=MiB)
    with pytest.raises(ImageUnacceptable, match=r"is 2097152 bytes, more than \[images\] max_size"):
        cache.fetch(server.base + "/ok", None, "raw")
    with pytest.raises(ImageUnacceptable, match=r"is at least \d+ bytes, more than"):
        cache.fetch(server.base + "/nolength", None, "raw")
    assert os.listdir(cache.base_dir) == []


def test_reserved_disk_space(tmp_path, server):
    cache = cache_for(tmp_path, server.base + "/", reserved_bytes=2**60)
    for path in ("/ok", "/nolength"):
        with pytest.raises(ImageError, match=r"reserved_disk_mb"):
            cache.fetch(server.base + path, None, "raw")
    assert os.listdir(cache.base_dir) == []


def test_transient_5xx_is_retried(tmp_path, server):
    cache = cache_for(tmp_path, server.base + "/", limits=FetchLimits(retries=2))
    entry = cache.fetch(server.base + "/flaky", _sha(BODY), "raw")
    assert entry.downloaded and server.gets["/flaky"] == 2


def test_stalled_read_is_interrupted_by_cancel_within_a_second(tmp_path, server):
    cache = cache_for(tmp_path, server.base + "/", limits=FetchLimits(stall_timeout=60))
    cancelled_at: list[float] = []

    def should_stop() -> bool:
        if server.gets.get("/stall") and not cancelled_at:
            time.sleep(0.3)  # let the read block first
            cancelled_at.append(time.monotonic())
        return bool(cancelled_at)

    with pytest.raises(ImageFetchInterrupted, match="/stall"):
        cache.fetch(server.base + "/stall", None, "raw", should_stop=should_stop)
    assert time.monotonic() - cancelled_at[0] < 1.5  # a correctness bound, not a benchmark
    assert os.listdir(cache.base_dir) == []  # the .part is gone


def test_stall_timeout(tmp_path, server):
    cache = cache_for(tmp_path, server.base + "/", limits=FetchLimits(stall_timeout=1))
    with pytest.raises(ImageUnreachable, match=r"stalled.*stall_timeout"):
        cache.fetch(server.base + "/stall", None, "raw")
    no_part(cache)


def test_fetch_timeout(tmp_path, server):
    cache = cache_for(
        tmp_path, server.base + "/", limits=FetchLimits(stall_timeout=60, fetch_timeout=1)
    )
    with pytest.raises(ImageUnreachable, match=r"fetch_timeout"):
        cache.fetch(server.base + "/stall", None, "raw")
    no_part(cache)


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.2:{port}/allowed/ok",  # another loopback address
        "{base}/elsewhere/ok",  # outside the allowed prefixes
        "http://169.254.169.254/latest/meta-data/?token=s3cret",
        "http://localhost:{port}/allowed/ok",  # another spelling of the host
    ],
)
def test_redirect_to_refused_location(tmp_path, server, target):
    port = server.base.rsplit(":", 1)[1]
    server.redirects["/redirect"] = target.format(port=port, base=server.base)
    cache = cache_for(tmp_path, server.base + "/r/", server.base + "/allowed/")
    with pytest.raises(ImageSourceRefused, match="redirects to") as err:
        cache.fetch(server.base + "/r/redirect", None, "raw")
    assert "s3cret" not in str(err.value)
    assert server.gets == {"/r/redirect": 1}  # nothing fetched from the target
    no_part(cache)


def test_redirect_inside_the_list_is_followed(tmp_path, server):
    server.redirects["/redirect"] = "/ok?sig=1"
    cache = cache_for(tmp_path, server.base + "/")
    assert cache.fetch(server.base + "/redirect", _sha(BODY), "raw").downloaded
    assert server.gets == {"/redirect": 1, "/ok": 1}


def test_redirect_to_allowed_directory_is_followed(tmp_path, server):
    server.redirects["/redirect"] = server.base + "/allowed/ok"
    cache = cache_for(tmp_path, server.base + "/r/", server.base + "/allowed/")
    assert cache.fetch(server.base + "/r/redirect", _sha(BODY), "raw").downloaded


def test_loopback_not_named_is_refused_before_connecting(tmp_path, server):
    # The entry names "localhost", which resolves to 127.0.0.1: allowed (it
    # names a loopback host). The connect guard checks the address itself.
    port = server.base.rsplit(":", 1)[1]
    cache = cache_for(tmp_path, f"http://localhost:{port}/")
    assert cache.fetch(f"http://localhost:{port}/ok", _sha(BODY), "raw").downloaded
    # "vm" resolves to 127.0.0.1 through /etc/hosts but is an ordinary name:
    # listed or not, the connect guard refuses the loopback address.
    other = cache_for(tmp_path / "o", f"http://vm:{port}/")
    with pytest.raises(ImageSourceRefused, match=r"127.0.0.1, a loopback address"):
        other.fetch(f"http://vm:{port}/ok", None, "raw")
    assert server.gets == {"/ok": 1}


def test_self_signed_certificate_refused_then_accepted_with_ca_file(
    tmp_path, tls_server, certificate
):
    cache = cache_for(
        tmp_path, tls_server.base + "/", limits=FetchLimits(stall_timeout=5, retries=2)
    )
    with pytest.raises(ImageUnreachable, match=r"TLS verification failed.*certif"):
        cache.fetch(tls_server.base + "/ok?token=s3cret", None, "raw")
    assert tls_server.gets == {}  # never retried, never served
    trusted = cache_for(
        tmp_path, tls_server.base + "/", limits=FetchLimits(stall_timeout=5, ca_file=certificate[0])
    )
    assert trusted.fetch(tls_server.base + "/ok", _sha(BODY), "raw").downloaded
    no_part(trusted)


def test_cancel_through_the_agent_rolls_back_within_seconds(
    real_conf, server, tmp_path, qcow2_image, cleanup
):
    conf = real_conf(images={"allowed_sources": f"{tmp_path},{server.base}/"})
    spec = dict(
        make_spec(qcow2_image), image={"source": server.base + "/stall", "disk_format": "raw"}
    )
    cleanup.append(spec["instance"]["uuid"])
    with Agent(conf) as agent:
        build_id = agent.start_build(spec)
        deadline = time.monotonic() + 30
        while not server.gets.get("/stall") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        started = time.monotonic()
        agent.cancel(build_id)
        outcome = agent.wait(build_id, timeout=30)
        took = time.monotonic() - started
    assert outcome.state == "ROLLED_BACK" and "BuildCancelled" in (outcome.error or "")
    assert took < 5
    base = Path(conf.state_path) / "instances" / "_base"
    assert [n for n in os.listdir(base) if n.endswith(".part")] == []
