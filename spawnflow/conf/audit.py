"""[audit] options: how often the agent compares what is on the host with the log."""

from oslo_config import cfg

GROUP = "audit"

OPTS = [
    cfg.IntOpt(
        "interval",
        default=600,
        min=0,
        help="Seconds between two host audits run by `spawnflow agent`: every "
        "domain, tap, libvirt secret, nwfilter and filter binding, instance "
        "directory and image-cache file on the host compared with the event "
        "log. What it finds is logged, and recorded in the log when it changes "
        "(`history show --diagnose` of an ACTIVE instance reads it). The "
        "periodic audit never removes an orphan (`spawnflow host audit --reap` "
        "does); it only removes image-cache entries unused for longer than "
        "[images] cache_max_age. 0 turns the periodic audit off.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)
