"""The fault suite's fixtures, its reduced/full selection and the table of outcomes.

``make test`` runs the reduced form (the cells not marked ``slow_faults``);
the full sweep (every call of the catalogue at every step, transient and
permanent) runs with ``SPAWNFLOW_FAULTS_FULL=1`` or ``-m slow_faults``. The
outcome of every cell that ran is printed as one table at the end of the run
(pytest's terminal summary, so it shows without ``-s``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from tests.faults import PERMANENT, REFUSED_ONCE, TRANSIENT

FULL_ENV = "SPAWNFLOW_FAULTS_FULL"
SLOW = "slow_faults"
NO_FAULT = "none"  # the mode of a baseline row


@dataclass(frozen=True)
class Row:
    """One cell's outcome: the build's final state and what the host kept."""

    label: str
    mode: str
    state: str
    leftovers: tuple[str, ...]
    diagnosis: str = ""  # of a FAILED build: what the operator is told

    def text(self) -> str:
        return f"{self.state} {len(self.leftovers)}"


_ROWS = pytest.StashKey[list[Row]]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave the full sweep out unless it was asked for (env var or ``-m slow_faults``)."""
    if os.environ.get(FULL_ENV) == "1" or SLOW in (config.option.markexpr or ""):
        return
    keep = [item for item in items if item.get_closest_marker(SLOW) is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


@pytest.fixture(scope="session")
def fault_table(request: pytest.FixtureRequest) -> list[Row]:
    """Where the cells put their outcome for the summary table."""
    return request.config.stash.setdefault(_ROWS, [])


def _table(rows: list[Row]) -> list[str]:
    cells: dict[str, dict[str, Row]] = {}
    for row in rows:
        cells.setdefault(row.label, {})[row.mode] = row
    width = max(len(label) for label in cells)
    modes = (TRANSIENT, REFUSED_ONCE, PERMANENT)
    lines = [f"{'fault point':<{width}}  " + "  ".join(f"{m:<14}" for m in modes).rstrip()]
    for label, by_mode in cells.items():
        shown = [by_mode[m].text() if m in by_mode else "-" for m in modes]
        if NO_FAULT in by_mode:
            shown = [by_mode[NO_FAULT].text(), "(no fault)", ""]
        lines.append(f"{label:<{width}}  " + "  ".join(f"{c:<14}" for c in shown).rstrip())
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    leaky = [r for r in rows if r.leftovers and r.state != "FAILED"]
    lines.append(
        f"{len(rows)} cells: "
        + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        + f"; {len(leaky)} with leftovers outside FAILED"
    )
    for row in rows:
        if row.leftovers:
            lines.append(f"  {row.label} {row.mode}: {row.state}, left {', '.join(row.leftovers)}")
        if row.diagnosis:
            lines.append(f"    diagnosis: {row.diagnosis}")
    return lines


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    rows = terminalreporter.config.stash.get(_ROWS, [])
    if not rows:
        return
    terminalreporter.section("fault injection: outcome (leftover count) per cell")
    for line in _table(rows):
        terminalreporter.write_line(line)
