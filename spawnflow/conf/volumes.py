"""[volumes] options: which host paths and libvirt secrets a spec's volumes may name."""

from oslo_config import cfg

GROUP = "volumes"

OPTS = [
    cfg.ListOpt(
        "allowed_paths",
        default=[],
        help="Host paths a 'local' volume may name: directories, whose regular "
        "files are allowed (the path must resolve inside one, links followed "
        "first), and globs with *, ? or [ matched against the resolved path, "
        "which allow block devices (/dev/mapper/vg0-vol-*). state_path, "
        "instances_path, the event log and any block device holding a mounted "
        "file system or swap are never allowed, whatever this list says. "
        "Empty: no local volumes.",
    ),
    cfg.ListOpt(
        "allowed_secret_usages",
        default=[],
        help="Usage ids of the libvirt secrets (type iscsi for iscsi volumes, "
        "ceph for rbd) that a volume's secret_uuid may name: the secret's "
        "<usage><target> (iscsi) or <usage><name> (ceph). Empty: none.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)
