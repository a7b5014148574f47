"""[database] options: where the event log lives."""

from oslo_config import cfg

GROUP = "database"

OPTS = [
    cfg.StrOpt(
        "connection",
        default=None,
        secret=True,
        sample_default="sqlite:///$state_path/spawnflow.sqlite",
        help="SQLAlchemy URL of the event log. Default: an embedded SQLite file "
        "under state_path. PostgreSQL: postgresql+psycopg://user:pw@host/db.",
    ),
    cfg.FloatOpt(
        "retry_interval",
        default=1.0,
        min=0.01,
        help="Seconds before an agent first retries the event log after a write "
        "failed because the log was unavailable (locked, full disk, server "
        "restarting); the wait doubles on each retry, up to max_retry_interval. "
        "The build whose write failed is held meanwhile, its next step not run.",
    ),
    cfg.FloatOpt(
        "max_retry_interval",
        default=30.0,
        min=0.01,
        help="Seconds; the longest wait between two retries of the event log.",
    ),
    cfg.IntOpt(
        "max_retries",
        default=40,
        min=-1,
        help="Retries of the event log before the agent gives up on it and exits "
        "(the held builds are then recovered by the next start); -1 retries "
        "forever. With the defaults an agent waits about 18 minutes.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)
