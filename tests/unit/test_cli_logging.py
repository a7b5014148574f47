"""Log lines the CLI prints are terminal-safe: a logged HTTP reason or stored name
may carry escapes, and the terminal reading stderr or the log file must not act.

Run in a subprocess: cliff binds its console handler to the real stderr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HOSTILE = "HTTP 404 \\x1b]0;PWNED\\x07\\x1b[31mRED \\u202eevil\\u200b"
SCRIPT = f"""
import logging
from spawnflow.cmd.main import SpawnflowApp
app = SpawnflowApp()
app.options, _ = app.parser.parse_known_args(["--log-file", LOG])
app.configure_logging()
logging.getLogger("spawnflow.engine.runner").warning("build x failed: %s", "{HOSTILE}")
"""


def test_console_and_file_log_lines_are_escaped(tmp_path: Path) -> None:
    log = tmp_path / "cli.log"
    result = subprocess.run(
        [sys.executable, "-c", f"LOG = {str(log)!r}\n" + SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for text in (result.stderr, log.read_text()):
        assert "PWNED" in text
        assert not any(c in text for c in "\x1b\x07\u202e\u200b"), repr(text)
        assert "\\x1b]0;PWNED\\x07" in text
