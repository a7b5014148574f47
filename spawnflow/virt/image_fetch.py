"""Reading an image source: a local file beneath an allowed directory, or HTTP(S).

Bounded in every direction a caller could abuse:

- local files are opened with ``hostpaths.open_beneath`` (no link followed, a
  regular file only, never blocking on a FIFO or a device);
- HTTP(S) goes through ``requests`` (streaming, TLS always verified, an
  optional CA bundle, environment proxies and ``.netrc`` ignored so the
  checked address is the one connected to and no credential leaves the host).
  Each connection resolves the host itself and refuses before connecting if
  any address is one the allow list refuses; redirects are followed by hand
  and each hop must match the allow list; transient errors (connection
  failures, a short body, 5xx, 429) are retried a bounded number of times with
  backoff;
- a watchdog thread (``fetch_watchdog``) ends the fetch when ``should_stop()``
  turns true (cancel, SIGTERM), at the overall deadline, or when no bytes came
  for the stall timeout: it shuts the socket down (the TLS one once wrapped),
  which makes a blocked read return at once, and the reader then raises the
  watchdog's reason.

The bytes go to a ``Sink`` (the image cache), which checks size and free space
as they arrive. Errors carry the masked URL only (``mask_url``).
"""

from __future__ import annotations

import errno
import os
import re
import select
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from spawnflow.exceptions import ImageSourceRefused, ImageUnreachable
from spawnflow.persistence.redact import MASK, mask_url
from spawnflow.virt import hostpaths
from spawnflow.virt.fetch_watchdog import POLL, FetchLimits, Watchdog
from spawnflow.virt.image_sources import AllowedSources, SourceRefused

CHUNK = 1024 * 1024
DEFAULT_LIMITS = FetchLimits()
# Progress is counted per read, and a read returns what has arrived (read1):
# a slow but steady server never looks stalled.
_MAX_REDIRECTS = 5
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
_MAX_BACKOFF = 10.0
# A query string inside an error message: up to whitespace, a quote or a bracket.
_QUERY_IN_TEXT = re.compile(r"\?[^\s)'\"\]>]+")


class Sink(Protocol):
    """Where fetched bytes go; raises to refuse them (size, free space)."""

    def begin(self, length: int | None) -> None:
        """Start (again) from nothing; ``length`` is the announced size if known."""

    def write(self, chunk: bytes) -> None:
        """Take the next bytes."""


def read_local(
    directory: str,
    path: str,
    sink: Sink,
    *,
    limits: FetchLimits = DEFAULT_LIMITS,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Copy the regular file ``path`` (inside the allowed ``directory``) into ``sink``."""
    with Watchdog(repr(path), limits, should_stop) as watch:
        try:
            fd = hostpaths.open_beneath(directory, path)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EINVAL, errno.EXDEV, errno.ENOTDIR):
                raise ImageSourceRefused(
                    f"image source {path!r} is not a regular file reachable without "
                    f"links beneath {directory} ({exc.strerror or exc})"
                ) from None
            raise ImageUnreachable(
                f"image source {path!r} unreadable: {exc.strerror or exc}"
            ) from None
        with os.fdopen(fd, "rb") as f:
            sink.begin(os.fstat(f.fileno()).st_size)
            while True:
                watch.check()
                try:
                    chunk = f.read(CHUNK)
                except OSError as exc:
                    raise ImageUnreachable(
                        f"image source {path!r} unreadable: {exc.strerror or exc}"
                    ) from None
                if not chunk:
                    break
                watch.progress()
                sink.write(chunk)
        watch.check()


# --- HTTP(S) -----------------------------------------------------------------


class _Refused(Exception):
    pass


def _guarded_connect(
    conn: HTTPConnection, url_of: Callable[[], str], allowed: AllowedSources, watch: Watchdog
) -> socket.socket:
    """Resolve, refuse any special address, connect (interruptibly), hand the socket
    to the watchdog. Replaces urllib3's ``_new_conn``."""
    host = conn._dns_host
    try:
        infos = socket.getaddrinfo(host, conn.port, 0, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise NewConnectionError(conn, f"cannot resolve {host}: {exc}") from exc
    for info in infos:  # every address first: one bad one refuses the name
        why = allowed.address_refusal(url_of(), str(info[4][0]))
        if why:
            raise _Refused(why)
    last: Exception | None = None
    for family, kind, proto, _name, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            for opt in conn.socket_options or ():
                sock.setsockopt(*opt)
            watch.attach(sock)
            _connect(sock, address, conn.timeout, watch)
            sock.settimeout(conn.timeout)
            return sock
        except _Refused:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            last = exc
    if isinstance(last, TimeoutError):
        raise ConnectTimeoutError(conn, f"connection to {host} timed out")
    raise NewConnectionError(conn, f"cannot connect to {host}: {last}")


def _connect(
    sock: socket.socket, address: tuple[Any, ...], timeout: float | None, watch: Watchdog
) -> None:
    """connect() that the watchdog can interrupt (a blocking connect ignores shutdown)."""
    sock.setblocking(False)
    code = sock.connect_ex(address)
    if code not in (0, errno.EINPROGRESS):
        raise OSError(code, os.strerror(code))
    limit = time.monotonic() + (timeout if isinstance(timeout, (int, float)) else 60.0)
    while code:
        if watch.fired.is_set():
            raise _Refused("interrupted")
        _, ready, _ = select.select([], [sock], [], POLL)
        if ready:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code))
            break
        if time.monotonic() > limit:
            raise TimeoutError("connect timed out")
    sock.setblocking(True)


def _session(
    allowed: AllowedSources, watch: Watchdog, url_of: Callable[[], str]
) -> requests.Session:
    """A session whose connections go through ``_guarded_connect``."""

    class GuardedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return _guarded_connect(self, url_of, allowed, watch)

    class GuardedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return _guarded_connect(self, url_of, allowed, watch)

        def connect(self) -> None:
            super().connect()
            # Wrapping in TLS detached the plain socket the watchdog held (its
            # shutdown would now do nothing): hand it the TLS one.
            watch.attach(self.sock)

    conn_cls, tls_cls = GuardedHTTPConnection, GuardedHTTPSConnection
    pool_cls = type("GuardedPool", (HTTPConnectionPool,), {"ConnectionCls": conn_cls})
    tls_pool_cls = type("GuardedTLSPool", (HTTPSConnectionPool,), {"ConnectionCls": tls_cls})

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": pool_cls, "https": tls_pool_cls}

    session = requests.Session()
    # No proxies, .netrc or CA bundle from the environment: the address checked
    # must be the one connected to, and no stored credential may go to a host
    # a caller chose.
    session.trust_env = False
    session.mount("http://", Adapter(max_retries=0))
    session.mount("https://", Adapter(max_retries=0))
    return session


class _Transient(Exception):
    pass


def read_http(
    url: str,
    sink: Sink,
    allowed: AllowedSources,
    *,
    limits: FetchLimits = DEFAULT_LIMITS,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Stream ``url`` into ``sink``; retries transient errors; errors name the masked URL."""
    shown = repr(mask_url(url))
    with Watchdog(shown, limits, should_stop) as watch:
        attempt = 0
        while True:
            try:
                _attempt(url, sink, allowed, watch, limits)
                watch.check()  # a shutdown by the watchdog can look like a clean EOF
                return
            except _Transient as exc:
                watch.check()
                if attempt >= limits.retries:
                    raise ImageUnreachable(
                        f"image source {shown}: {exc} (after {attempt + 1} attempts)"
                    ) from None
                watch.sleep(min(_MAX_BACKOFF, 0.5 * 2**attempt))
                attempt += 1


def _attempt(
    url: str, sink: Sink, allowed: AllowedSources, watch: Watchdog, limits: FetchLimits
) -> None:
    """One GET of ``url`` (following allowed redirects) into ``sink``."""
    current = [url]
    session = _session(allowed, watch, lambda: current[0])
    try:
        for _hop in range(_MAX_REDIRECTS + 1):
            try:
                allowed.match_url(current[0])
            except SourceRefused as exc:
                raise ImageSourceRefused(f"image source {exc}") from None
            watch.progress()
            try:
                resp = session.get(
                    current[0],
                    stream=True,
                    allow_redirects=False,
                    verify=limits.ca_file or True,
                    headers={"Accept-Encoding": "identity"},
                    # Connect: bounded by the stall timeout; the watchdog
                    # interrupts sooner. Read: the socket timeout is only a
                    # backstop behind the watchdog's stall check.
                    timeout=(
                        min(limits.stall_timeout, max(watch.remaining(), 0.1)),
                        limits.stall_timeout + 5,
                    ),
                )
            except _Refused as exc:
                watch.check()
                raise ImageSourceRefused(f"image source {exc}") from None
            except requests.exceptions.SSLError as exc:
                watch.check()
                raise ImageUnreachable(
                    f"image source {mask_url(url)!r}: TLS verification "
                    f"failed: {_reason(exc, url, current[0])}"
                ) from None
            except requests.RequestException as exc:
                watch.check()
                raise _Transient(_reason(exc, url, current[0])) from None
            with resp:
                if resp.status_code in _REDIRECT_STATUS and "location" in resp.headers:
                    try:
                        current[0] = allowed.check_redirect(current[0], resp.headers["location"])
                    except SourceRefused as exc:
                        raise ImageSourceRefused(f"image source {exc}") from None
                    continue
                if resp.status_code in _RETRY_STATUS:
                    raise _Transient(f"HTTP {resp.status_code} {resp.reason}")
                if resp.status_code != 200:
                    raise ImageUnreachable(
                        f"image source {mask_url(url)!r}: HTTP {resp.status_code} {resp.reason}"
                    )
                _stream(resp, sink, watch, (url, current[0]))
                return
        raise ImageUnreachable(
            f"image source {mask_url(url)!r}: more than {_MAX_REDIRECTS} redirects"
        )
    finally:
        session.close()


def _stream(resp: requests.Response, sink: Sink, watch: Watchdog, urls: tuple[str, ...]) -> None:
    length = resp.headers.get("content-length")
    sink.begin(int(length) if length and length.isdigit() else None)
    raw = resp.raw
    while True:
        watch.check()
        try:
            # read1: what has arrived, up to CHUNK; urllib3 raises if the body
            # ends before Content-Length, and never reads past it.
            chunk = raw.read1(CHUNK, decode_content=False)
        except Exception as exc:  # urllib3/http.client/ssl errors alike
            watch.check()
            raise _Transient(f"read failed: {_reason(exc, *urls)}") from None
        if not chunk:
            return
        watch.progress()
        sink.write(chunk)


def _reason(exc: BaseException, *urls: str) -> str:
    """A requests/urllib3 error as one line without the URL's secrets.

    urllib3 puts the request path with its query into some messages
    ("... with url: /img?X-Amz-Signature=..."): the query, fragment and any
    userinfo of ``url`` are masked wherever they appear.
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    for url in urls:
        parts = urlsplit(url)
        for secret in (parts.query, parts.fragment, parts.password, parts.username):
            if secret:
                text = text.replace(secret, MASK)
    # requests re-quotes the URL before urllib3 words its errors (%7E -> ~,
    # spaces and non-ASCII percent-encoded), so the literal replacement above
    # can miss: any query string left in the text goes too.
    return _QUERY_IN_TEXT.sub("?" + MASK, text)


# FetchLimits lives with the watchdog that enforces it; callers find it here.
__all__ = ["CHUNK", "DEFAULT_LIMITS", "FetchLimits", "Sink", "read_http", "read_local"]
