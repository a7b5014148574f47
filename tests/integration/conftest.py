"""Fixtures for integration tests against the real host parts.

These tests need a running libvirtd with the QEMU driver (``qemu:///system``),
root (to make Linux bridges), ``qemu-img`` and a PostgreSQL server; all of it is
installed and started by ``tools/host-setup.sh``. A missing part makes the
tests FAIL with a message naming the script to run: they are never skipped.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults import injector  # noqa: F401 - a fixture for every test here

DEFAULT_LIBVIRT_URI = "qemu:///system"
DEFAULT_PG_URL = "postgresql+psycopg://spawnflow:spawnflow@127.0.0.1:5432/spawnflow_test"
QCOW2_VIRTUAL_SIZE = "16M"


def _quiet_libvirt() -> None:
    """Stop libvirt-python printing every (expected) error to stderr."""
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


@pytest.fixture(scope="session")
def libvirt_uri() -> str:
    """The URI of a libvirtd that answers; fails if none does."""
    uri = os.environ.get("SPAWNFLOW_TEST_LIBVIRT_URI", DEFAULT_LIBVIRT_URI)
    try:
        import libvirt
    except ImportError as exc:  # pragma: no cover - depends on the venv
        pytest.fail(f"libvirt-python is not importable ({exc}); install the test deps")
    _quiet_libvirt()
    try:
        conn = libvirt.open(uri)
        try:
            conn.getVersion()
        finally:
            conn.close()
    except libvirt.libvirtError as exc:
        pytest.fail(
            f"libvirtd does not answer on {uri}: {exc}. "
            "Run tools/start-libvirtd.sh (or tools/host-setup.sh) as root first."
        )
    return uri


class _ReopenedConnection:
    """A libvirt connection that re-opens itself if libvirtd was restarted under it
    (test_libvirtd_restart.py restarts it in the middle of the session)."""

    def __init__(self, uri: str) -> None:
        import libvirt

        self._uri = uri
        self._conn = libvirt.open(uri)

    def __getattr__(self, name: str) -> object:
        import libvirt

        try:
            self._conn.getLibVersion()
        except libvirt.libvirtError:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()
            self._conn = libvirt.open(self._uri)
        return getattr(self._conn, name)

    def close(self) -> None:
        self._conn.close()


@pytest.fixture(scope="session")
def libvirt_conn(libvirt_uri: str) -> Iterator[object]:
    """One read-write libvirt connection shared by the session (re-opened after a restart)."""
    conn = _ReopenedConnection(libvirt_uri)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def real_conf(tmp_path: Path, libvirt_uri: str):
    """``real_conf(network={...})``: a config for the real libvirtd, state under tmp_path."""
    from tests.helpers import load_conf

    def make(**groups):
        base = {
            "libvirt": {"connection_uri": libvirt_uri, "virt_type": "qemu", "boot_timeout": 60},
            "firewall": {"driver": "nwfilter"},
            "network": {"vif_plugging_timeout": 30},
            # Volumes and key files the tests make live in tmp_path.
            "volumes": {"allowed_paths": tmp_path},
            "encryption": {"key_dir": tmp_path},
        }
        for group, options in groups.items():
            base.setdefault(group, {}).update(options)
        return load_conf(tmp_path, **base)

    return make


@pytest.fixture
def cleanup(libvirt_conn) -> Iterator[list[str]]:
    """Instance uuids whose ACTIVE domain, filters, secrets and taps the test removes after.

    Taps are found by the ``ifalias`` the tap VIF driver tags them with (libvirt
    removes the taps of bridge VIFs itself when the domain is destroyed).
    """
    import libvirt
    from pyroute2 import IPRoute

    uuids: list[str] = []
    yield uuids
    for instance in uuids:
        try:
            dom = libvirt_conn.lookupByUUIDString(instance)
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError:
            pass
        for flt in libvirt_conn.listAllNWFilters():
            if instance in flt.name():
                flt.undefine()
        for secret in libvirt_conn.listAllSecrets():
            if instance in (secret.usageID() or ""):
                secret.undefine()
        with IPRoute() as ipr:
            for link in ipr.get_links():
                if instance in (link.get("IFLA_IFALIAS") or ""):
                    ipr.link("del", index=link["index"])


@pytest.fixture
def linux_bridge() -> Iterator[str]:
    """A fresh, up Linux bridge (``sfbr`` + 6 hex digits); deleted afterwards."""
    try:
        from pyroute2 import IPRoute
    except ImportError as exc:  # pragma: no cover - depends on the venv
        pytest.fail(f"pyroute2 is not importable ({exc}); install the test deps")

    name = "sfbr" + secrets.token_hex(3)  # 10 chars, within IFNAMSIZ-1 (15)
    with IPRoute() as ipr:
        try:
            ipr.link("add", ifname=name, kind="bridge")
        except Exception as exc:
            pytest.fail(f"cannot create Linux bridge {name} (needs root / CAP_NET_ADMIN): {exc}")
        try:
            (index,) = ipr.link_lookup(ifname=name)
            ipr.link("set", index=index, state="up")
            yield name
        finally:
            for idx in ipr.link_lookup(ifname=name):
                ipr.link("del", index=idx)


@pytest.fixture
def qcow2_image(tmp_path: Path) -> Path:
    """An empty qcow2 image (16 MiB virtual size) made by ``qemu-img create``."""
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        pytest.fail("qemu-img not found; run tools/install-deps.sh (or tools/host-setup.sh)")
    path = tmp_path / "disk.qcow2"
    subprocess.run(
        [qemu_img, "create", "-q", "-f", "qcow2", str(path), QCOW2_VIRTUAL_SIZE],
        check=True,
        capture_output=True,
        text=True,
    )
    return path


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """SQLAlchemy URL of the test database (``$SPAWNFLOW_TEST_PG_URL`` or the default)."""
    import sqlalchemy as sa

    url = os.environ.get("SPAWNFLOW_TEST_PG_URL") or DEFAULT_PG_URL
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        shown = sa.make_url(url).render_as_string(hide_password=True)
        pytest.fail(
            f"PostgreSQL at {shown} does not accept connections: {exc}. "
            "Run tools/start-postgres.sh (or tools/host-setup.sh) as root first."
        )
    finally:
        engine.dispose()
    return url
