"""[firewall] options: per-instance libvirt nwfilter rules."""

from oslo_config import cfg

GROUP = "firewall"

OPTS = [
    cfg.StrOpt(
        "driver",
        default="nwfilter",
        choices=["nwfilter", "noop"],
        help="nwfilter: a per-instance filter referencing libvirt's clean-traffic "
        "filter with the port IPs. noop: no filtering.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)
