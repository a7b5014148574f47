"""libvirt secrets for qemu native LUKS volumes (usage type 'volume').

The usage id ties a secret to one build of one instance's volume
(``spawnflow/<instance>/<volume>/<build>``): a re-run of that build finds the
secret it made before a crash instead of defining a second one, and a revert
only ever removes its own build's secret, never the one a later build of the
same instance uses. The passphrase goes to libvirt only (``setValue``) and is
never returned or logged.
"""

from __future__ import annotations

import os
import stat

import libvirt
from lxml import etree

from spawnflow.exceptions import EncryptionError, NotSupportedByHost
from spawnflow.virt import hostpaths
from spawnflow.virt.host import Host, error_code


def usage_id(instance_uuid: str, volume_id: str, build_id: str) -> str:
    return f"spawnflow/{instance_uuid}/{volume_id}/{build_id}"


KEY_FILE_MAX = 4096
KEY_FILE_MODES = (0o400, 0o600)
KEY_DIR_OPTION = "[encryption] key_dir"
USAGES_OPTION = "[volumes] allowed_secret_usages"
# The libvirt secret usage type a network volume's credentials must have.
AUTH_SECRET_TYPES = {"iscsi": "iscsi", "rbd": "ceph"}
_USAGE_TYPES = {
    libvirt.VIR_SECRET_USAGE_TYPE_NONE: "none",
    libvirt.VIR_SECRET_USAGE_TYPE_VOLUME: "volume",
    libvirt.VIR_SECRET_USAGE_TYPE_CEPH: "ceph",
    libvirt.VIR_SECRET_USAGE_TYPE_ISCSI: "iscsi",
    libvirt.VIR_SECRET_USAGE_TYPE_TLS: "tls",
    libvirt.VIR_SECRET_USAGE_TYPE_VTPM: "vtpm",
}


def _key_file_problem(shown: str, info: os.stat_result) -> str | None:
    """Why a key file with this ``stat`` is refused (owner, mode, size), else None."""
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid != 0:
        return f"{shown} is owned by uid {info.st_uid}; a key file must be owned by root"
    if mode not in KEY_FILE_MODES:
        return f"{shown} has mode {mode:04o}; a key file must have mode 0400 or 0600"
    if info.st_size > KEY_FILE_MAX:
        return f"{shown} has {info.st_size} bytes; a key file holds at most {KEY_FILE_MAX}"
    if info.st_size == 0:
        return f"{shown} is empty"
    return None


def check_key_file(path: str, key_dir: str) -> str | None:
    """Why the spec's ``key_file`` is refused, else None; the file is never opened.

    It must resolve inside ``key_dir`` and be a regular file owned by root,
    mode 0400/0600, of at most 4 KiB. Only ``lstat`` of the resolved path is
    used, so a FIFO or a device there is refused without being touched, and a
    huge (sparse) file without being read. ``read_key_file`` checks all of it
    again on the descriptor it reads.
    """
    real = os.path.realpath(path)
    shown = repr(path) if real == path else f"{path!r} (resolves to {real!r})"
    if hostpaths.containing_dir(real, [key_dir]) is None:
        return f"{shown} is outside {KEY_DIR_OPTION} ({key_dir})"
    try:
        info = os.lstat(real)
    except FileNotFoundError:
        return f"{shown} does not exist"
    except OSError as exc:
        return f"cannot stat {shown}: {exc.strerror}"
    if not stat.S_ISREG(info.st_mode):
        return f"{shown} is not a regular file"
    return _key_file_problem(shown, info)


def read_key_file(path: str, key_dir: str) -> bytes:
    """The passphrase from a root-only key file inside ``key_dir``.

    Opened with ``hostpaths.open_beneath`` (no link followed, a FIFO or device
    refused at once, never blocking), then owner, mode and size are checked on
    the open descriptor, so what is read is what was checked; at most 4 KiB + 1
    bytes are read whatever the file claims. The whole file is the passphrase,
    byte for byte (a trailing newline included), as ``cryptsetup --key-file``
    and qemu's ``secret,file=`` read it.
    """
    try:
        fd = hostpaths.open_beneath(key_dir, path)
    except OSError as exc:
        raise EncryptionError(
            f"cannot open key file {path} beneath {KEY_DIR_OPTION} "
            f"({key_dir}): {exc.strerror or exc}"
        ) from exc
    try:
        problem = _key_file_problem(f"key file {path}", os.fstat(fd))
        if problem:
            raise EncryptionError(problem)
        chunks = []
        left = KEY_FILE_MAX + 1
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise EncryptionError(f"cannot read key file {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    key = b"".join(chunks)
    if len(key) > KEY_FILE_MAX:  # grew since the fstat
        raise EncryptionError(f"key file {path} holds more than {KEY_FILE_MAX} bytes")
    if not key:
        raise EncryptionError(f"key file {path} is empty")
    return key


def check_auth_secret(
    host: Host | None, secret_uuid: str, driver: str, allowed_usages: list[str]
) -> str | None:
    """Why a network volume may not use libvirt secret ``secret_uuid``, else None.

    The secret must exist, have the usage type of the volume's driver (iscsi
    for iscsi, ceph for rbd), and a usage id listed in ``[volumes]
    allowed_secret_usages``; a secret spawnflow made for a LUKS volume
    (usage ``spawnflow/...``) is never allowed. Without a libvirt connection
    nothing can be checked, so the secret is refused.
    """
    shown = repr(secret_uuid)
    if host is None:
        return f"{shown} cannot be checked without a libvirt connection"

    def read(conn: libvirt.virConnect) -> tuple[int, str | None]:
        secret = conn.secretLookupByUUIDString(secret_uuid)
        # the iscsi <target>, the ceph <name>, the volume path
        return secret.usageType(), secret.usageID()

    try:
        usage_type, usage_id = host.call(f"looking up libvirt secret {shown}", read)
    except libvirt.libvirtError as exc:
        if error_code(exc) in (libvirt.VIR_ERR_NO_SECRET, libvirt.VIR_ERR_NO_SUPPORT):
            return f"{shown} names no libvirt secret on this host"
        return f"cannot look up libvirt secret {shown}: {exc}"
    kind = _USAGE_TYPES.get(usage_type, str(usage_type))
    if (usage_id or "").startswith("spawnflow/"):
        return f"{shown} is a volume secret spawnflow made; it is never given to a guest disk"
    wanted = AUTH_SECRET_TYPES[driver]
    if kind != wanted:
        return (
            f"{shown} is a secret of usage type {kind!r}; a volume of driver {driver!r} "
            f"needs usage type {wanted!r}"
        )
    if usage_id not in allowed_usages:
        listed = ", ".join(allowed_usages) if allowed_usages else "empty: none"
        return f"{shown} has usage {usage_id!r}, not in {USAGES_OPTION} ({listed})"
    return None


def _find(conn: libvirt.virConnect, usage: str) -> libvirt.virSecret | None:
    try:
        return conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_VOLUME, usage)
    except libvirt.libvirtError as exc:
        if error_code(exc) == libvirt.VIR_ERR_NO_SECRET:
            return None
        raise


def find(host: Host, usage: str) -> str | None:
    """The uuid of the volume secret ``usage``, None if there is none."""
    if not host.supports_secrets:
        return None

    def read(conn: libvirt.virConnect) -> str | None:
        secret = _find(conn, usage)
        return None if secret is None else str(secret.UUIDString())

    try:
        return host.call(f"looking up secret {usage}", read)
    except libvirt.libvirtError as exc:
        raise EncryptionError(f"looking up secret {usage}: {exc}") from exc


def _secret_xml(usage: str, description: str) -> str:
    root = etree.Element("secret", ephemeral="no", private="yes")
    etree.SubElement(root, "description").text = description
    usage_el = etree.SubElement(root, "usage", type="volume")
    etree.SubElement(usage_el, "volume").text = usage
    text: str = etree.tostring(root, encoding="unicode")
    return text


def define(
    host: Host, usage: str, passphrase: bytes, description: str = "spawnflow volume passphrase"
) -> str:
    """Define a private, persistent volume secret holding ``passphrase``; return its uuid.

    A secret with this usage already there (defined by an attempt whose answer
    was lost to a libvirtd restart) is this one: it gets the value again.
    """
    if not host.supports_secrets:
        raise NotSupportedByHost(
            f"libvirt at {host.uri} has no secret driver; encrypted volumes cannot be attached here"
        )

    def run(conn: libvirt.virConnect) -> str:
        secret = _find(conn, usage) or conn.secretDefineXML(_secret_xml(usage, description))
        secret.setValue(passphrase)
        return str(secret.UUIDString())

    try:
        return host.call(f"defining secret {usage}", run)
    except libvirt.libvirtError as exc:
        raise EncryptionError(f"defining secret {usage}: {exc}") from exc


def set_value(host: Host, usage: str, passphrase: bytes) -> str:
    """(Re)set the passphrase of the existing secret ``usage``; return its uuid.

    A crash between secretDefineXML and setValue leaves a secret without a
    value; a re-run that finds the secret sets the value again instead of
    trusting it.
    """

    def run(conn: libvirt.virConnect) -> str:
        secret = conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_VOLUME, usage)
        secret.setValue(passphrase)
        return str(secret.UUIDString())

    try:
        return host.call(f"setting the value of secret {usage}", run)
    except libvirt.libvirtError as exc:
        raise EncryptionError(f"setting the value of secret {usage}: {exc}") from exc


def undefine(host: Host, usage: str) -> bool:
    """Remove the secret; True if there was one."""
    if not host.supports_secrets:
        return False

    def run(conn: libvirt.virConnect) -> bool:
        secret = _find(conn, usage)
        if secret is None:
            return False
        secret.undefine()
        return True

    try:
        return host.call(f"undefining secret {usage}", run)
    except libvirt.libvirtError as exc:
        if error_code(exc) == libvirt.VIR_ERR_NO_SECRET:
            return False
        raise EncryptionError(f"undefining secret {usage}: {exc}") from exc
