"""[encryption] options: where LUKS passphrase files of encrypted volumes may live."""

from oslo_config import cfg

GROUP = "encryption"

OPTS = [
    cfg.StrOpt(
        "key_dir",
        default="/etc/spawnflow/keys",
        help="Directory holding the passphrase files that encrypted volumes name "
        "(encryption.key_file). A key file must resolve inside it, be a regular "
        "file owned by root with mode 0400 or 0600, and hold at most 4 KiB.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)
