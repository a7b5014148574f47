"""``spawnflow history timeline BUILD_ID -o FILE``: a build drawn as a Gantt chart."""

from __future__ import annotations

import argparse
from pathlib import Path

from spawnflow.cmd.base import Command
from spawnflow.cmd.files import write_private
from spawnflow.cmd.options import add_db_option
from spawnflow.cmd.render.timeline_html import render_html
from spawnflow.cmd.render.timeline_svg import render_svg
from spawnflow.exceptions import SpawnflowError
from spawnflow.history import History

RENDERERS = {"svg": render_svg, "html": render_html}


def _format(output: str, chosen: str | None) -> str:
    """``--format``, else the output file's extension (``.htm`` is html)."""
    kind = chosen or Path(output).suffix.lower().lstrip(".")
    kind = "html" if kind == "htm" else kind
    if kind not in RENDERERS:
        raise SpawnflowError(
            f"cannot tell the format of {output}: name it .svg or .html, or give --format svg|html"
        )
    return kind


class HistoryTimeline(Command):
    """Draw one build as a Gantt chart: SVG or a self-contained HTML page.

    Forward runs, reverts (another colour), interruptions and event waits; the
    format follows the file's extension (.svg, .html) unless --format says.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        add_db_option(parser)
        parser.add_argument("build_id", metavar="BUILD_ID", help="build id or unique prefix")
        parser.add_argument(
            "-o", "--output", metavar="FILE", required=True, help="FILE.svg or FILE.html"
        )
        parser.add_argument(
            "--format", choices=list(RENDERERS), help="default: from the file's extension"
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        kind = _format(parsed_args.output, parsed_args.format)
        with History.open(self.db_url(parsed_args)) as history:
            build = history.build(parsed_args.build_id)
        data = RENDERERS[kind](
            build,
            vif_plugging_timeout=self.conf.network.vif_plugging_timeout,
            diagnosis=self.diagnosis(build),
        )
        write_private(parsed_args.output, data)
        self.app.stdout.write(f"wrote {parsed_args.output} ({kind}, {len(build.steps)} steps)\n")
        return 0
