"""[metrics] options: where the agent serves its Prometheus metrics."""

from oslo_config import cfg

GROUP = "metrics"

OPTS = [
    cfg.StrOpt(
        "bind",
        default="",
        help="Address and port on which `spawnflow agent` serves Prometheus "
        "metrics over HTTP (any path, e.g. /metrics): HOST:PORT, an IPv6 "
        "address in brackets ([::1]:9465), e.g. 127.0.0.1:9465. Empty: no "
        "metrics are served. Port 0 picks a free port (named in the agent's "
        "log). A malformed value, or an address that cannot be bound, stops "
        "the agent at start. The endpoint has no authentication: bind it to "
        "an address only the monitoring system reaches. The metrics are "
        'listed under "Metrics" in the operations guide.',
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)
