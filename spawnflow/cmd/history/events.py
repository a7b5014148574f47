"""``spawnflow history events BUILD_ID``: the raw events of one build, in log order."""

from __future__ import annotations

import argparse
import json
from typing import Any

from spawnflow.cmd.base import HistoryLister, is_table, wants_objects
from spawnflow.cmd.render.events import payload_summary
from spawnflow.cmd.render.text import fit
from spawnflow.cmd.render.times import Stamp, iso, timestamp
from spawnflow.history import Event

EVENT_COLUMNS = ("Seq", "Time", "Kind", "Name", "Change", "Payload")
EVENT_FULL_COLUMNS = ("Seq", "Time", "Kind", "Subject", "Name", "From", "To", "Payload")
KINDS = ["build", "logbook", "flow", "atom", "external"]


def _change(event: Event) -> str:
    if not (event.from_state or event.to_state):
        return ""
    return f"{event.from_state or ''}→{event.to_state or ''}"


class HistoryEvents(HistoryLister):
    """The raw events of one build, in log order (seq, time, kind, name, from→to, payload)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("build_id", metavar="BUILD_ID", help="build id or unique prefix")
        parser.add_argument(
            "--kind", action="append", choices=KINDS, help="only events of this kind (repeatable)"
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], Any]:
        with self.open_history(parsed_args) as history:
            events = history.events(parsed_args.build_id)
        if parsed_args.kind:
            events = [e for e in events if e.kind in parsed_args.kind]
        if is_table(parsed_args):
            rows = [
                (
                    e.seq,
                    timestamp(e.at, Stamp.CLOCK_MS),
                    e.kind,
                    e.name or "",
                    _change(e),
                    payload_summary(e),
                )
                for e in events
            ]
            return EVENT_COLUMNS, fit(EVENT_COLUMNS, rows, {"Name": 8, "Change": 18, "Payload": 8})
        objects = wants_objects(parsed_args)
        return EVENT_FULL_COLUMNS, [
            (
                e.seq,
                iso(e.at),
                e.kind,
                e.subject,
                e.name,
                e.from_state,
                e.to_state,
                e.payload if objects else json.dumps(e.payload, sort_keys=True),
            )
            for e in events
        ]
