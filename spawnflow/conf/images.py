"""[images] options: where image sources may come from and how a fetch is bounded."""

from oslo_config import cfg

GROUP = "images"

OPTS = [
    cfg.ListOpt(
        "allowed_sources",
        default=["$state_path/images"],
        help="Where a build spec's image.source may point: local directories "
        "(absolute paths; the source must resolve inside one of them, links "
        "followed first) and URL prefixes (scheme://host[:port]/path-prefix). "
        "Pieces are compared (host case-insensitive, IDNA, default ports), the "
        "path must lie below the prefix's directory and may hold no '.'/'..' "
        "segment, encoded or not; every redirect hop must match too. A "
        "loopback, link-local, unspecified, multicast or cloud-metadata address "
        "(also IPv4-mapped) is refused unless an entry names that address (or "
        "localhost) itself; an ordinary name resolving to one is always "
        "refused. Private (RFC 1918) addresses are allowed when an entry names "
        "them. The instances path and the database are never a source.",
    ),
    cfg.FloatOpt(
        "max_size_gb",
        default=50.0,
        min=0.001,
        help="Largest image a fetch may write, in GiB; checked against "
        "Content-Length and again while streaming.",
    ),
    cfg.IntOpt(
        "reserved_disk_mb",
        default=1024,
        min=0,
        help="MiB that must stay free on the image cache's file system after a "
        "fetch; a fetch that would go below it is refused before writing.",
    ),
    cfg.IntOpt(
        "fetch_timeout",
        default=3600,
        min=1,
        help="Seconds one image fetch may take in all, retries included.",
    ),
    cfg.IntOpt(
        "stall_timeout",
        default=60,
        min=1,
        help="Seconds an HTTP(S) fetch may wait for the server to connect or send the next bytes.",
    ),
    cfg.IntOpt(
        "fetch_retries",
        default=3,
        min=0,
        help="Retries of a transient HTTP(S) error (connection reset, 5xx, 429) "
        "before a fetch fails.",
    ),
    cfg.StrOpt(
        "ca_file",
        default=None,
        help="CA bundle that verifies HTTPS image servers (default: the system's "
        "trust store). TLS is always verified.",
    ),
    cfg.StrOpt(
        "cache_group",
        default="libvirt-qemu",
        help="Group that may read image-cache entries (the group libvirt runs "
        "guests as); other users never can. When the group does not exist, "
        "entries are readable by root only.",
    ),
    cfg.IntOpt(
        "cache_max_age",
        default=86400,
        min=0,
        help="Seconds an image-cache entry may stay unused before the host audit "
        "removes it (the periodic audit of `spawnflow agent`, and `spawnflow "
        "host audit --reap`), as nova's image cache manager does. An entry is "
        "used while an unfinished, ACTIVE or FAILED build on this host was made "
        "from it; every audit that may remove entries marks the used ones "
        "(their modification time), so the age counts from when the last build "
        "using it went away. 0 never removes an entry.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)
