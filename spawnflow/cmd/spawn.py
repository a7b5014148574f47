"""``spawnflow spawn SPEC``: build one VM, showing each step as it happens."""

from __future__ import annotations

from cliff.command import Command
from cliff.formatters.table import TableFormatter

from spawnflow import conf as sf_conf
from spawnflow.cmd.history import STEP_COLUMNS, step_rows, summary
from spawnflow.engine.agent import Agent, queue_build
from spawnflow.flows.policy import check_queueable, check_spec
from spawnflow.flows.spec import parse_spec
from spawnflow.history import History
from spawnflow.persistence import lifecycle
from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.eventlog import EventLog
from spawnflow.virt.host import Host


class Spawn(Command):
    """Spawn a VM from a YAML/JSON build spec and wait for the outcome."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("spec", metavar="SPEC", help="build spec (YAML or JSON file)")
        parser.add_argument(
            "--timeout", type=float, default=None, help="seconds to wait for the outcome"
        )
        parser.add_argument(
            "--no-wait",
            action="store_true",
            help="only queue the build in the database for this host's "
            "agent (`spawnflow agent`) and print its id",
        )
        return parser

    def _progress(self, build_id: str, step: str, state: str, elapsed: float) -> None:
        self.app.stdout.write(f"{elapsed:8.3f}s  {step:<14} {state}\n")
        self.app.stdout.flush()

    def take_action(self, parsed_args):
        conf = self.app.conf
        if parsed_args.no_wait:
            return self._queue(conf, parsed_args.spec)
        with Agent(conf, progress=self._progress) as agent:
            build_id = agent.start_build(parsed_args.spec)
            # Not "queued": a retry of an ACTIVE instance returns its build,
            # whose state the summary below shows.
            self.app.stdout.write(f"build {build_id}\n")
            outcome = agent.wait(build_id, timeout=parsed_args.timeout)
        with History.open(sf_conf.database_url(conf)) as history:
            build = history.build(build_id)
        self.app.stdout.write("\n" + summary(build) + "\n")
        formatter = TableFormatter()
        formatter.emit_list(STEP_COLUMNS, step_rows(build), self.app.stdout, _TableArgs())
        return 0 if outcome.state == lifecycle.ACTIVE else 1

    def _queue(self, conf, spec_path: str) -> int:
        spec = parse_spec(spec_path)  # validated before anything is written
        host = Host(conf.libvirt.connection_uri, conf.libvirt.virt_type)
        try:
            check_spec(spec, conf, host)
        finally:
            host.close()
        check_queueable(spec, conf)
        log = EventLog.open(sf_conf.database_url(conf))
        backend = EventLogBackend(eventlog=log)
        try:
            build_id, created = queue_build(log, backend, spec, conf.host)
            state = None if created else log.get_build(build_id).state
        finally:
            backend.close()
            log.close()
        if state == lifecycle.ACTIVE:
            self.app.stdout.write(
                f"build {build_id} of instance {spec.instance.uuid} is "
                f"already ACTIVE on host {conf.host}; nothing queued\n"
            )
            return 0
        doing = "queued for" if created else "already queued/running on"
        self.app.stdout.write(f"build {build_id} {doing} the agent of host {conf.host}\n")
        return 0


class _TableArgs:
    """The parsed-argument attributes cliff's table formatter reads."""

    max_width = 0
    fit_width = True
    print_empty = False
    sort_columns = False
    sort_direction = "asc"
