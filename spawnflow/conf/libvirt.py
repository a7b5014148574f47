"""[libvirt] options: which hypervisor connection to drive."""

from oslo_config import cfg

GROUP = "libvirt"

OPTS = [
    cfg.StrOpt(
        "connection_uri",
        default="qemu:///system",
        help="libvirt URI. test:///default is libvirt's in-process test driver "
        "(no daemon; for the demo and functional tests).",
    ),
    cfg.StrOpt(
        "virt_type",
        default="kvm",
        choices=["kvm", "qemu", "test"],
        help="Domain type. 'qemu' is TCG emulation; 'test' goes with test:///default.",
    ),
    cfg.IntOpt(
        "boot_timeout",
        default=300,
        min=1,
        help="Seconds to wait for the domain to reach RUNNING after it was "
        "resumed (nova waits forever).",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)
