"""``spawnflow history export|import``: one build's history as a JSON document, and back.

An export is self-contained (the build row and every event) and ASCII only;
an import is checked whole before the target database is even opened.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from spawnflow.cmd.base import Command
from spawnflow.cmd.files import write_private
from spawnflow.cmd.options import add_db_option
from spawnflow.cmd.render.text import safe
from spawnflow.exceptions import PersistenceError
from spawnflow.history import History, dumps_document, import_document, read_document


class HistoryExport(Command):
    """Write one build's history as a self-contained JSON document (events + build row)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        add_db_option(parser)
        parser.add_argument("build_id", metavar="BUILD_ID", help="build id or unique prefix")
        parser.add_argument("-o", "--output", metavar="FILE", help="file (default: stdout)")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        with History.open(self.db_url(parsed_args)) as history:
            doc = history.export(parsed_args.build_id)
        text = dumps_document(doc)
        if parsed_args.output in (None, "-"):
            self.app.stdout.write(text)
            return 0
        write_private(parsed_args.output, text.encode())
        self.app.stderr.write(
            f"exported build {safe(doc['build']['build_id'])} "
            f"({len(doc['events'])} events) to {parsed_args.output}\n"
        )
        return 0


def _read(source: str) -> dict[str, Any]:
    """The document in ``source`` (``-``: stdin), checked whole."""
    try:
        if source == "-":
            return read_document(sys.stdin.buffer, "stdin")
        with Path(source).open("rb") as stream:
            return read_document(stream, source)
    except OSError as exc:
        raise PersistenceError(f"cannot read {source}: {exc.strerror or exc}") from None


class HistoryImport(Command):
    """Load an exported build into this (or --db) database; refuses a build already there.

    The target must be a spawnflow database (an empty one is upgraded first).
    Unfinished builds are refused unless --allow-unfinished: an agent owning
    their host would try to recover them.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        add_db_option(parser)
        parser.add_argument("file", metavar="FILE", help="export document ('-': stdin)")
        parser.add_argument(
            "--allow-unfinished",
            action="store_true",
            help="import a build that is not in a final state",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        doc = _read(parsed_args.file)  # checked before the target opens
        build_id = import_document(
            self.db_url(parsed_args), doc, allow_unfinished=parsed_args.allow_unfinished
        )
        self.app.stdout.write(
            f"imported build {safe(build_id)} "
            f"({safe(doc['build'].get('state'))}, {len(doc['events'])} "
            "events)\n"
        )
        return 0
