"""Configuration: oslo.config option groups and the loader used by the CLI and the library.

Each group lives in its own module; ``list_opts`` feeds ``oslo-config-generator``
(``make genconfig`` writes etc/spawnflow/spawnflow.conf.sample).
"""

from __future__ import annotations

from pathlib import Path

from oslo_config import cfg
from sqlalchemy.engine import make_url

from spawnflow.conf import (
    audit,
    database,
    default,
    encryption,
    firewall,
    images,
    libvirt,
    metrics,
    network,
    recovery,
    volumes,
)

_MODULES = (
    default,
    database,
    libvirt,
    network,
    firewall,
    recovery,
    images,
    volumes,
    encryption,
    audit,
    metrics,
)


def register_opts(conf: cfg.ConfigOpts) -> None:
    for module in _MODULES:
        module.register_opts(conf)


def list_opts() -> list[tuple[str | None, list[cfg.Opt]]]:
    """Option groups for oslo-config-generator (entry point ``oslo.config.opts``)."""
    return [(module.GROUP, list(module.OPTS)) for module in _MODULES]


def load(argv: list[str] | None = None) -> cfg.ConfigOpts:
    """Build a fresh ``ConfigOpts`` from command-line style arguments.

    ``load(['--config-file', 'etc/spawnflow/demo.conf'])`` is what the CLI does;
    each call returns an independent object so that tests and several agents in
    one process never share global state.
    """
    conf = cfg.ConfigOpts()
    register_opts(conf)
    conf(args=list(argv or []), project="spawnflow", default_config_files=[])
    return conf


def database_url(conf: cfg.ConfigOpts) -> str:
    """The event log URL: ``[database] connection`` or SQLite under state_path."""
    connection: str | None = conf.database.connection
    if connection:
        return connection
    return "sqlite:///" + str(Path(conf.state_path) / "spawnflow.sqlite")


def protected_paths(conf: cfg.ConfigOpts) -> list[tuple[str, str]]:
    """``(what, path)`` of everything spawnflow keeps on the host that no spec may
    name, whatever the allow lists say: state_path, instances_path (every
    instance's disk and the image cache) and the SQLite event log with its
    -wal/-shm/-journal (it may live elsewhere). Passphrase files need no entry:
    as an image or a volume they would have to pass the allow lists, and the
    key directory is the operator's to keep out of them."""
    found = [
        ("state_path", str(conf.state_path)),
        ("instances_path", instances_path(conf)),
    ]
    url = make_url(database_url(conf))
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        db_file = str(Path(url.database).absolute())
        found += [
            ("the event log database", db_file + suffix)
            for suffix in ("", "-wal", "-shm", "-journal")
        ]
    return found


def instances_path(conf: cfg.ConfigOpts) -> str:
    """Where instance directories and the ``_base`` image cache live."""
    return str(conf.instances_path or Path(conf.state_path) / "instances")
