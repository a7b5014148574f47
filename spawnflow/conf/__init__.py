"""Configuration: oslo.config option groups and the loader used by the CLI and the library.

Each group lives in its own module; ``list_opts`` feeds ``oslo-config-generator``
(``make genconfig`` writes etc/spawnflow/spawnflow.conf.sample).
"""

from __future__ import annotations

from pathlib import Path

from oslo_config import cfg

from spawnflow.conf import (
    database,
    default,
    encryption,
    firewall,
    images,
    libvirt,
    network,
    recovery,
    volumes,
)

_MODULES = (default, database, libvirt, network, firewall, recovery, images, volumes, encryption)


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


def instances_path(conf: cfg.ConfigOpts) -> str:
    """Where instance directories and the ``_base`` image cache live."""
    return str(conf.instances_path or Path(conf.state_path) / "instances")
