"""The trust boundary: what a build spec may name on this host.

The agent runs as root and a spec is data from a caller, not an operator.
Everything on the host a spec can name (image sources, local volume paths,
passphrase files, libvirt secrets) must lie inside what the operator allowed
in the configuration ([images], [volumes], [encryption]). ``check_spec`` runs
after the spec's own validation and before anything is written: a refused spec
raises ``InvalidSpec`` naming each field, its value (secrets masked) and the
option that would allow it, and leaves no build row and no file behind.

The steps check again where they open what was allowed (the image fetch opens
relative to the checked directory with ``O_NOFOLLOW``), so a link swapped in
after this check does not widen what a build can reach.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from oslo_config import cfg

from spawnflow import conf as sf_conf
from spawnflow.exceptions import ConfigError, InvalidSpec, VolumeError
from spawnflow.flows.spec import BuildSpec
from spawnflow.persistence.redact import mask_url
from spawnflow.virt import secrets
from spawnflow.virt.host import Host
from spawnflow.virt.image_sources import SourceRefused
from spawnflow.virt.images import ImageCache, allowed_sources
from spawnflow.virt.volumes import VolumePolicy
from spawnflow.virt.volumes.local import check_local_path


@dataclass(frozen=True)
class Refusal:
    """One refused field: ``field`` is its dotted path, ``reason`` says why and which
    option would allow it (``image.source: '/etc/shadow' is outside [images]
    allowed_sources (...)``)."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


def check_spec(spec: BuildSpec, conf: cfg.ConfigOpts, host: Host | None = None) -> None:
    """Raise ``InvalidSpec`` listing every field of ``spec`` this host does not allow.

    ``host`` is needed to look up libvirt secrets named by iscsi/rbd volumes;
    without it a spec that names one is refused.
    """
    refusals = [*image_refusals(spec, conf), *volume_refusals(spec, conf, host)]
    if refusals:
        raise InvalidSpec("build spec refused: " + "; ".join(str(r) for r in refusals))


def image_refusals(spec: BuildSpec, conf: cfg.ConfigOpts) -> list[Refusal]:
    """image.source against [images] allowed_sources.

    A local source must resolve inside an allowed directory and be a regular
    file if it exists; a URL must lie under an allowed prefix, and every
    address its host resolves to must be an ordinary one (see
    ``spawnflow.virt.image_sources``). The fetch checks again where it opens or
    connects, so this is the early answer, not the only guard.
    """
    try:
        allowed = allowed_sources(conf)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        allowed.check(spec.image.source)
    except SourceRefused as exc:
        return [Refusal("image.source", str(exc))]
    return []


def volume_refusals(spec: BuildSpec, conf: cfg.ConfigOpts, host: Host | None) -> list[Refusal]:
    """volumes.N.path, volumes.N.secret_uuid, volumes.N.encryption.key_file against
    [volumes] and [encryption].

    The rules live with the host primitives that apply them again at run time
    (``virt.volumes.local.check_local_path``, ``virt.secrets.check_key_file``,
    ``virt.secrets.check_auth_secret``), so the spec check and the steps
    cannot drift apart. Nothing is opened: a FIFO or device is judged by lstat.
    """
    refusals: list[Refusal] = []
    policy = volume_policy(conf)
    seen: dict[str, int] = {}
    for index, volume in enumerate(spec.volumes):
        where = f"volumes.{index}"
        if volume.driver == "local" and volume.path is not None:
            try:
                local = check_local_path(volume.path, policy)
            except VolumeError as exc:
                refusals.append(Refusal(f"{where}.path", str(exc)))
            else:
                # Two links to one file: qemu would refuse the second ("Failed
                # to get write lock") after the build had made its secrets.
                if local.path in seen:
                    refusals.append(
                        Refusal(
                            f"{where}.path",
                            (
                                f"{volume.path!r} is {local.path!r}, the same file as "
                                f"volumes.{seen[local.path]}.path"
                            ),
                        )
                    )
                seen.setdefault(local.path, index)
        if volume.driver in secrets.AUTH_SECRET_TYPES and volume.secret_uuid is not None:
            reason = secrets.check_auth_secret(
                host, volume.secret_uuid, volume.driver, list(conf.volumes.allowed_secret_usages)
            )
            if reason:
                refusals.append(Refusal(f"{where}.secret_uuid", reason))
        if volume.encryption is not None:
            reason = secrets.check_key_file(volume.encryption.key_file, conf.encryption.key_dir)
            if reason:
                refusals.append(Refusal(f"{where}.encryption.key_file", reason))
    return refusals


def volume_policy(conf: cfg.ConfigOpts) -> VolumePolicy:
    """``[volumes] allowed_paths`` plus what no volume may reach whatever it says.

    state_path and instances_path hold the event log, every instance's disk
    and the image cache; the event log may also live elsewhere ([database]
    connection), so its file and SQLite's -wal/-shm/-journal are added.
    """
    forbidden = sf_conf.protected_paths(conf)
    return VolumePolicy(allowed_paths=tuple(conf.volumes.allowed_paths), forbidden=tuple(forbidden))


def check_queueable(spec: BuildSpec, conf: cfg.ConfigOpts) -> None:
    """Raise ``InvalidSpec`` if a build queued for another process could not fetch its image.

    A queued build (``spawn --no-wait``) is run by the agent from the persisted
    spec, and the persisted spec never holds a URL's query, fragment or
    credentials (a presigned token). Unless the image is already in the cache
    under the spec's checksum, the agent could only fail; refuse it now.
    """
    source = spec.image.source
    if mask_url(source) == source:
        return
    digest = spec.image.sha256
    if digest and os.path.isfile(ImageCache.from_conf(conf).entry_path(digest)):
        return
    raise InvalidSpec(
        f"build spec refused: image.source: {mask_url(source)!r} carries a query, fragment "
        "or credentials, which are never stored, so the agent could not fetch it from a "
        "queued build; run `spawnflow spawn` without --no-wait (or Agent.start_build), or "
        "give image.checksum of an image already in the cache"
    )
