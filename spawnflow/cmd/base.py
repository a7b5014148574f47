"""What every spawnflow command has: the typed application, its configuration, and the
history listings' shared behaviour (``--db``, escaped cells, a footer line).

Commands derive from ``Command`` or ``Lister`` here instead of cliff's, so that
``self.app.conf`` (and ``self.conf``) type-check: cliff types ``app`` as its
plain ``App``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from typing import Any

from cliff import command, lister
from oslo_config import cfg

from spawnflow.cmd.main import SpawnflowApp
from spawnflow.cmd.options import add_db_option, db_url
from spawnflow.cmd.render.text import safe
from spawnflow.engine.admin import running_flow_version
from spawnflow.history import BuildHistory, History, log_wait


class _OfSpawnflow:
    app: SpawnflowApp

    @property
    def conf(self) -> cfg.ConfigOpts:
        return self.app.conf

    def db_url(self, parsed_args: argparse.Namespace) -> str:
        """``--db`` of a command that takes it, else the configured database."""
        return db_url(getattr(parsed_args, "db", None), self.conf)

    def diagnosis(self, build: BuildHistory) -> str:
        """``build`` diagnosed in words with this host's settings (timeouts, recovery)."""
        conf = self.conf
        return build.diagnose(
            vif_plugging_timeout=conf.network.vif_plugging_timeout,
            recovery_policy=conf.recovery.policy,
            resume_window=conf.recovery.resume_window,
            lease_seconds=getattr(conf.recovery, "lease_seconds", None),
            # What the build's agent, if it runs on this host, says it waits for.
            log_wait=log_wait(str(conf.state_path), build.host, build.build_id),
            flow_version=running_flow_version(),
            on_flow_change=conf.recovery.on_flow_change,
        ).text


class Command(_OfSpawnflow, command.Command):
    """A spawnflow command that prints what it did."""

    app: SpawnflowApp


class Lister(_OfSpawnflow, lister.Lister):
    """A spawnflow command that lists rows (cliff's ``-f table|json|yaml|csv|value``)."""

    app: SpawnflowApp


def is_table(parsed_args: argparse.Namespace) -> bool:
    return getattr(parsed_args, "formatter", "table") == "table"


def wants_objects(parsed_args: argparse.Namespace) -> bool:
    """json and yaml: values keep their types (and escape what a terminal would act on)."""
    return getattr(parsed_args, "formatter", "table") in ("json", "yaml")


class HistoryLister(Lister):
    """A ``history`` listing: reads ``--db`` (or the configured database).

    A listing may set ``footer``: one line printed under the table (not in the
    machine-readable formats).
    """

    footer: str | None = None

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        add_db_option(parser)
        return parser

    def open_history(self, parsed_args: argparse.Namespace) -> History:
        return History.open(self.db_url(parsed_args))

    def produce_output(
        self,
        parsed_args: argparse.Namespace,
        column_names: Sequence[str],
        data: Iterable[Sequence[Any]],
    ) -> int:
        if not wants_objects(parsed_args):
            # table, csv and value print strings as they are; json and yaml escape
            # every control and non-ASCII character themselves.
            data = [tuple(safe(v) if isinstance(v, str) else v for v in row) for row in data]
        result = super().produce_output(parsed_args, column_names, data)
        if self.footer and is_table(parsed_args):
            self.app.stdout.write(safe(self.footer) + "\n")
        return result
