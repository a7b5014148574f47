"""[DEFAULT] options: who this host is and where it keeps its files."""

import socket

from oslo_config import cfg

GROUP = None

OPTS = [
    cfg.StrOpt(
        "host",
        default=socket.gethostname(),
        sample_default="<hostname>",
        help="Name of this compute host; builds are owned by the host that runs them.",
    ),
    cfg.StrOpt(
        "state_path",
        default="/var/lib/spawnflow",
        help="Directory for the embedded event log, locks and instance files.",
    ),
    cfg.StrOpt(
        "instances_path",
        default=None,
        sample_default="$state_path/instances",
        help="Directory for instance disks and the _base image cache "
        "(default: <state_path>/instances).",
    ),
    cfg.IntOpt(
        "min_free_disk_mb",
        default=512,
        min=0,
        help="New builds are refused while the filesystem of state_path or "
        "instances_path has less free space than this (MiB): a full disk "
        "would interrupt them and the event log's own writes. 0: no check.",
    ),
    cfg.IntOpt(
        "shutdown_timeout",
        default=60,
        min=0,
        help="Seconds a delete waits for the guest to power off after an ACPI "
        "shutdown request before it destroys the domain (as nova does). "
        "0, or `spawnflow delete --force`: destroy at once.",
    ),
    cfg.FloatOpt(
        "queue_poll_interval",
        default=2.0,
        min=0.05,
        help="Seconds between the agent's looks for builds queued for this host "
        "(by `spawnflow spawn --no-wait`, `delete --no-wait` or spawnflow.client) "
        "and for operator requests. On PostgreSQL the agent is also woken at once "
        "by a NOTIFY sent when a build is queued; this poll backs that up. On "
        "SQLite it is the only way queued work is found.",
    ),
    cfg.IntOpt(
        "max_concurrent_builds",
        default=10,
        min=1,
        help="Builds run at the same time by one agent, one TaskFlow engine each.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS)
