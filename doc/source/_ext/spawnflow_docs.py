"""Sphinx directives that draw tables from spawnflow's own code at build time.

``.. lifecycle-table::``
    The build lifecycle transition table, read from
    ``spawnflow.persistence.lifecycle.TRANSITIONS``, ``OPERATOR_TRANSITIONS`` and
    ``TORN_DOWN``, one block of rows per kind of build
    (the one table the event log checks every build transition against), with
    who makes each transition: the agent, or only an operator.

``.. spawn-steps::``
    The steps of the spawn flow in flow order, read from
    ``spawnflow.flows.spawn`` (``TASKS`` and ``step_names()``): each step's
    name and the docstring of the module that holds it (what the step creates
    and what its revert removes).

``.. delete-steps::``
    The steps of the delete flow, read the same way from
    ``spawnflow.flows.teardown``.

All import the package, so the documentation cannot say something the code
does not do; an import error or a missing name fails the build.
"""

from __future__ import annotations

import importlib
import inspect
import sys

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList


def _cell(text: str) -> list[str]:
    return text.splitlines() or [""]


def _list_table(header: list[str], rows: list[list[str]], widths: list[int]) -> list[str]:
    """A reStructuredText list-table; each cell may hold several lines of markup."""
    out = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: " + " ".join(str(w) for w in widths),
        "",
    ]
    for row in [header, *rows]:
        for i, cell in enumerate(row):
            lines = _cell(cell)
            out.append(("   * - " if i == 0 else "     - ") + lines[0])
            out.extend("       " + line if line else "" for line in lines[1:])
    out.append("")
    return out


class _TableDirective(Directive):
    has_content = False

    def lines(self) -> list[str]:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        source = f"<{type(self).__name__}>"
        container = nodes.container()
        self.state.nested_parse(
            StringList(self.lines(), source), self.content_offset, container
        )
        return container.children


class LifecycleTable(_TableDirective):
    """The build lifecycle of each kind of build: every state, where it may go next and
    who makes the move (the agent, only an operator, or the instance's delete), and
    whether it is final."""

    def lines(self) -> list[str]:
        lifecycle = importlib.import_module("spawnflow.persistence.lifecycle")
        rows = []
        for kind in lifecycle.KINDS:
            operator_table = lifecycle.OPERATOR_TRANSITIONS[kind]
            for state, targets in lifecycle.TRANSITIONS[kind].items():
                shown = "*(new build)*" if state is None else f"``{state}``"
                by_agent = ", ".join(f"``{t}``" for t in sorted(targets)) or "—"
                by_operator = operator_table.get(state, frozenset())
                operator = ", ".join(f"``{t}``" for t in sorted(by_operator)) or "—"
                torn = lifecycle.TORN_DOWN.get(state, frozenset()) if kind == "spawn" else ()
                by_delete = ", ".join(f"``{t}``" for t in sorted(torn)) or "—"
                final = "final" if state is not None and lifecycle.is_final(state) else ""
                rows.append([kind, shown, by_agent, operator, by_delete, final])
        return _list_table(
            [
                "kind",
                "from",
                "may go to (made by the agent)",
                "made only by an operator",
                "made by the instance's delete",
                "",
            ],
            rows,
            [8, 14, 30, 20, 18, 10],
        )


class _FlowSteps(_TableDirective):
    """A flow's steps in order, each with its module's docstring."""

    module = ""
    heading = ""

    def lines(self) -> list[str]:
        flow = importlib.import_module(self.module)
        # The flow's own step names (what history shows), in flow order.
        names = flow.step_names()
        if len(names) != len(flow.TASKS):
            raise self.error(f"step_names() and TASKS of {self.module} disagree")
        rows = []
        for number, (task_cls, name) in enumerate(zip(flow.TASKS, names), start=1):
            module = sys.modules[task_cls.__module__]
            doc = inspect.cleandoc(module.__doc__ or task_cls.__doc__ or "")
            rows.append([str(number), f"``{name}``", doc])
        return _list_table(["#", "step", self.heading], rows, [4, 16, 80])


class SpawnSteps(_FlowSteps):
    """The spawn flow's steps in order, with what each creates and reverts."""

    module = "spawnflow.flows.spawn"
    heading = "what it does, what its revert removes"


class DeleteSteps(_FlowSteps):
    """The delete flow's steps in order, with what each removes."""

    module = "spawnflow.flows.teardown"
    heading = "what it removes"


def setup(app):
    app.add_directive("lifecycle-table", LifecycleTable)
    app.add_directive("spawn-steps", SpawnSteps)
    app.add_directive("delete-steps", DeleteSteps)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
