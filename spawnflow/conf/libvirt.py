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
    cfg.IntOpt(
        "reconnect_timeout",
        default=60,
        min=1,
        help="Seconds a libvirt call waits for libvirtd to answer again after the "
        "connection was lost (a libvirtd restart), before the step fails with "
        "'libvirtd at <uri> is unreachable'. The connection is re-opened and the call "
        "retried; every call of a step and of a revert is safe to repeat.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)
