"""[network] options: waiting for network-vif-plugged events."""

from oslo_config import cfg

GROUP = "network"

OPTS = [
    cfg.IntOpt(
        "vif_plugging_timeout",
        default=300,
        min=0,
        help="Seconds to wait for network-vif-plugged events of ports that are "
        "not active yet. 0 disables waiting.",
    ),
    cfg.BoolOpt(
        "vif_plugging_is_fatal",
        default=True,
        help="Fail (and roll back) the build when the events time out or a port "
        "reports 'failed'; otherwise log and continue.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)
