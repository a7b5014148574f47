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
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)
