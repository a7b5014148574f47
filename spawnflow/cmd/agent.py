"""``spawnflow agent``: the long-lived agent of this host.

It takes the host lease (a second agent refuses to start), recovers every
unfinished build, then runs builds queued with ``spawnflow spawn --no-wait``
(and audits the host every ``[audit] interval``)
until SIGTERM/SIGINT, when it stops taking work and lets running steps reach
a boundary (those builds resume on the next start).

Under systemd (``etc/systemd/spawnflow-agent.service``, ``Type=notify``) it says
READY=1 once recovery is decided and started, WATCHDOG=1 at each renewal of its
host lease while it is healthy, and STOPPING=1 when it begins to drain
(``spawnflow.cmd.service``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from spawnflow import Agent
from spawnflow.cmd.base import Command
from spawnflow.cmd.service import Notifier

LOG = logging.getLogger(__name__)


class AgentCommand(Command):
    """Run the agent: recover this host's builds, then run queued ones until SIGTERM."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--poll-interval",
            type=float,
            default=None,
            metavar="SECONDS",
            help="how often to look for queued builds (default: [DEFAULT] "
            "queue_poll_interval; on PostgreSQL a queued build also wakes the agent at once)",
        )
        return parser

    def _progress(self, build_id: str, step: str, state: str, elapsed: float) -> None:
        LOG.info("build %s  %-14s %s", build_id, step, state)

    def _watch(self, agent: Agent, notifier: Notifier) -> None:
        """WATCHDOG=1 at each renewal of the host lease, while the agent can go on: a
        lost lease or log, or a heartbeat that stopped, lets systemd's watchdog fire."""
        lease_seconds = self.conf.recovery.lease_seconds
        timeout = notifier.watchdog_seconds
        if timeout is not None and timeout < 2 * lease_seconds / 3:
            LOG.warning(
                "the systemd watchdog (%.0fs) is shorter than two lease renewals "
                "([recovery] lease_seconds %s, renewed every third): raise WatchdogSec",
                timeout,
                lease_seconds,
            )

        def renewed() -> None:
            if agent.failed is None:
                notifier.watchdog()

        agent.lease.on_renewed.append(renewed)

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        notifier = Notifier.from_environ()
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        agent = Agent(self.conf, progress=self._progress)
        agent.start()
        for build_id, decision in agent.recovered.items():
            self.app.stdout.write(
                f"recovering build {build_id}: {decision.action} ({decision.reason})\n"
            )
        self.app.stdout.write(f"agent of host {self.conf.host} running\n")
        self.app.stdout.flush()
        self._watch(agent, notifier)
        # Recovery is decided and its builds submitted: the host is in service.
        notifier.ready(f"host {self.conf.host}: running, {len(agent.recovered)} build(s) recovered")
        failed = None
        try:
            while not stop.is_set():
                failed = agent.failed
                if failed is not None:
                    break
                for build_id in agent.pick_up_queued():
                    self.app.stdout.write(f"picked up build {build_id}\n")
                    self.app.stdout.flush()
                for build_id in agent.pick_up_requests():  # build retry / rollback
                    self.app.stdout.write(f"rolling back build {build_id} (operator)\n")
                    self.app.stdout.flush()
                agent.audit_if_due()  # [audit] interval; what it finds goes to the log
                agent.wait_for_work(parsed_args.poll_interval, stop)
        finally:
            notifier.stopping(
                f"stopping ({failed})" if failed else "stopping: running steps finish"
            )
            self.app.stdout.write("stopping: running steps finish, then builds pause\n")
            self.app.stdout.flush()
            agent.stop()
        if failed is not None:
            # Exit non-zero so a service manager restarts the agent; the next
            # start recovers whatever this one left.
            self.app.stderr.write(f"spawnflow agent: stopped: {failed}\n")
            return 1
        return 0
