"""The agent's metrics endpoint: ``[metrics] bind``, the HTTP server, the log-read metrics.

Kept apart from ``engine.metrics`` (the agent's counters and hooks): this is
what touches sockets and reads the log at scrape time. The server answers any
path with the registry in Prometheus' text format, one thread per request,
and writes no access log (a scrape every few seconds would drown the agent's).
What the collector reads is one grouped count over the host's unfinished
builds, at most once a second however many scrapers there are; when the log
cannot answer, the scrape still succeeds, with the last values read and
``spawnflow_database_up 0``.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from spawnflow.exceptions import ConfigError
from spawnflow.persistence import db, lifecycle
from spawnflow.persistence import tables as t
from spawnflow.persistence.eventlog import EventLog

LOG = logging.getLogger(__name__)

OPTION = "[metrics] bind"
CACHE_SECONDS = 1.0  # a read of the log serves every scrape within this time
UNFINISHED = tuple(sorted(lifecycle.STATES - lifecycle.FINAL))
LOG_METRICS = (
    "spawnflow_queue_depth",
    "spawnflow_unfinished_builds",
    "spawnflow_oldest_unfinished_build_age_seconds",
    "spawnflow_database_up",
)
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


def parse_bind(value: str | None) -> tuple[str, int] | None:
    """``(host, port)`` of a ``[metrics] bind`` value; None when empty (metrics off).

    ``127.0.0.1:9465``, ``[::1]:9465``, ``localhost:9465``; port 0 picks a free one.
    """
    text = (value or "").strip()
    if not text:
        return None
    match = re.fullmatch(r"\[([^\]]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", text)
    if match is None:
        raise ConfigError(
            f"{OPTION} = {text!r}: expected HOST:PORT, an IPv6 address in brackets "
            "([::1]:9465), e.g. 127.0.0.1:9465, or nothing (no metrics)"
        )
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if match.group(1) is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{OPTION} = {text!r}: {host!r} is not an IPv6 address") from None
    elif not _HOST.match(host):
        raise ConfigError(f"{OPTION} = {text!r}: {host!r} is not an address or a host name")
    if port > 65535:
        raise ConfigError(f"{OPTION} = {text!r}: port {port} is out of range (0-65535)")
    return host, port


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log (see the module docstring)."""


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer would look up the address' FQDN (a DNS query) for nothing.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]
        self.setup_environ()


class MetricsServer:
    """The listening socket (taken at once) and the thread that serves it (``start``)."""

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry) -> None:
        host, port = address
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            server_class = type("MetricsHTTPServer", (_Server,), {"address_family": family})
            self._server: WSGIServer = make_server(
                host, port, make_wsgi_app(registry), server_class, _Quiet
            )
        except OSError as exc:
            raise ConfigError(f"{OPTION} = {host}:{port}: cannot listen there: {exc}") from None
        self._thread: threading.Thread | None = None
        bound: tuple[Any, ...] = tuple(self._server.server_address)
        shown = f"[{bound[0]}]" if family == socket.AF_INET6 else str(bound[0])
        self.url = f"http://{shown}:{bound[1]}/metrics"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="spawnflow-metrics", daemon=True
        )
        self._thread.start()
        LOG.info("serving Prometheus metrics at %s", self.url)

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()


class LogCollector(Collector):
    """Queue depth, unfinished builds and the oldest one's age, read from the log."""

    def __init__(
        self, host: str, failed: Callable[[], None], cache_seconds: float = CACHE_SECONDS
    ) -> None:
        self.host = host
        self.cache_seconds = cache_seconds
        self.log: Callable[[], EventLog | None] = lambda: None  # set by AgentMetrics.serve
        self._failed = failed
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._counts: dict[str, int] = dict.fromkeys(UNFINISHED, 0)
        self._oldest: float | None = None  # created_at of the oldest unfinished build
        self._up = False

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families(time.time())

    def collect(self) -> Iterable[GaugeMetricFamily]:
        with self._lock:
            now = time.monotonic()
            if self._read_at is None or now - self._read_at >= self.cache_seconds:
                self._read_at = now
                self._read()
            return self._families(time.time())

    def _read(self) -> None:
        log = self.log()
        if log is None:
            self._up = False
            return
        b = t.builds.c
        query = (
            sa.select(b.state, sa.func.count(), sa.func.min(b.created_at))
            .where(b.host == self.host, b.state.in_(UNFINISHED))
            .group_by(b.state)
        )
        try:
            with log.engine.connect() as conn:
                rows = conn.execute(query).all()
        except Exception as exc:
            # Never fail a scrape: report the last values and that the log is down.
            if self._up:
                LOG.warning("metrics: cannot read the event log: %s", db.first_line(exc))
            self._up = False
            self._failed()
            return
        self._counts = dict.fromkeys(UNFINISHED, 0)
        for state, n, _oldest in rows:
            self._counts[state] = n
        oldest = [float(row[2]) for row in rows if row[2] is not None]
        self._oldest = min(oldest) if oldest else None
        self._up = True

    def _families(self, now: float) -> list[GaugeMetricFamily]:
        queue, unfinished, age, up = LOG_METRICS
        by_state = GaugeMetricFamily(
            unfinished, "This host's unfinished builds in the log, by state.", labels=["state"]
        )
        for state, n in self._counts.items():
            by_state.add_metric([state], n)
        oldest = 0.0 if self._oldest is None else max(0.0, now - self._oldest)
        return [
            GaugeMetricFamily(
                queue,
                "This host's QUEUED builds in the log (waiting for this agent).",
                value=self._counts.get(lifecycle.QUEUED, 0),
            ),
            by_state,
            GaugeMetricFamily(
                age,
                "Seconds since the oldest unfinished build of this host was queued (0: none).",
                value=oldest,
            ),
            GaugeMetricFamily(
                up, "1 if the last read of the event log answered, else 0.", value=int(self._up)
            ),
        ]


__all__ = ["LOG_METRICS", "LogCollector", "MetricsServer", "parse_bind"]
