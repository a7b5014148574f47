"""The PostgreSQL cluster behind a test URL, stopped and started for real.

The cluster is found by the URL's port among Debian's clusters
(``pg_lsclusters``) and driven with ``pg_ctlcluster``, exactly as
``tools/start-postgres.sh`` starts it. ``running_again`` guarantees that a
test which stops the server leaves it accepting connections, whatever
happened in between.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa

READY_TIMEOUT = 60.0


def _run(*argv: str) -> str:
    # cwd=/: the postgres tools complain when the cwd is not readable by postgres.
    done = subprocess.run(argv, capture_output=True, text=True, cwd="/", check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class Cluster:
    """One Debian PostgreSQL cluster (version, name) serving ``url``."""

    version: str
    name: str
    url: str

    @classmethod
    def serving(cls, url: str) -> Cluster:
        """The local cluster listening on the URL's port; the test fails if there is none."""
        parsed = sa.make_url(url)
        port = str(parsed.port or 5432)
        if parsed.host not in (None, "127.0.0.1", "localhost", "::1"):
            pytest.fail(f"cannot restart PostgreSQL on {parsed.host}: only a local server")
        try:
            listing = _run("pg_lsclusters", "--no-header")
        except (OSError, RuntimeError) as exc:
            pytest.fail(f"pg_lsclusters: {exc}; run tools/host-setup.sh (Debian's postgresql)")
        for line in listing.splitlines():
            version, name, cluster_port, *_ = line.split()
            if cluster_port == port:
                return cls(version, name, url)
        pytest.fail(f"no local PostgreSQL cluster listens on port {port} (pg_lsclusters)")

    def online(self) -> bool:
        line = _run("pg_lsclusters", "--no-header", self.version, self.name)
        return line.split()[3].startswith("online")

    def stop(self) -> None:
        """Stop the server (``fast``: open sessions are terminated, as on a restart)."""
        _run("pg_ctlcluster", self.version, self.name, "stop", "-m", "fast")

    def start(self) -> None:
        """Start the server as tools/start-postgres.sh does, then wait until it answers."""
        if not self.online():
            # The socket directory lives in /run, which may be fresh.
            _run(
                "install", "-d", "-o", "postgres", "-g", "postgres", "-m", "2775", "/run/postgresql"
            )
            try:
                _run("pg_ctlcluster", self.version, self.name, "start")
            except RuntimeError:
                if not self.online():  # not another thread starting it at the same time
                    raise
        self.wait_ready()

    def restart(self, down_for: float = 1.0) -> None:
        """Stop, stay down ``down_for`` seconds (new connections are refused), start."""
        self.stop()
        time.sleep(down_for)
        self.start()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Return once the test database accepts a query; raise after ``timeout``."""
        deadline = time.monotonic() + timeout
        engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        try:
            while True:
                try:
                    with engine.connect() as conn:
                        conn.execute(sa.text("SELECT 1"))
                    return
                except sa.exc.OperationalError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        finally:
            engine.dispose()

    @contextlib.contextmanager
    def running_again(self) -> Iterator[Cluster]:
        """The block may stop the server; it accepts connections again afterwards."""
        try:
            yield self
        finally:
            self.start()
