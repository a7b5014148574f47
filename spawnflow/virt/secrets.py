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
from spawnflow.virt.host import Host, error_code


def usage_id(instance_uuid: str, volume_id: str, build_id: str) -> str:
    return f"spawnflow/{instance_uuid}/{volume_id}/{build_id}"


def read_key_file(path: str) -> bytes:
    """The passphrase from a root-only key file; refuse files others can read.

    The whole file is the passphrase, byte for byte (a trailing newline
    included), as ``cryptsetup --key-file`` and qemu's ``secret,file=`` read it.
    """
    try:
        info = os.stat(path)
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise EncryptionError(f"key file {path} is readable by group/others; chmod 600 it")
        with open(path, "rb") as f:
            key = f.read()
    except OSError as exc:
        raise EncryptionError(f"cannot read key file {path}: {exc.strerror}") from exc
    if not key:
        raise EncryptionError(f"key file {path} is empty")
    return key


def find(host: Host, usage: str) -> str | None:
    if not host.supports_secrets:
        return None
    try:
        return host.conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_VOLUME, usage)\
            .UUIDString()
    except libvirt.libvirtError as exc:
        if error_code(exc) == libvirt.VIR_ERR_NO_SECRET:
            return None
        raise EncryptionError(f"looking up secret {usage}: {exc}") from exc


def define(host: Host, usage: str, passphrase: bytes,
           description: str = "spawnflow volume passphrase") -> str:
    """Define a private, persistent volume secret holding ``passphrase``; return its uuid."""
    if not host.supports_secrets:
        raise NotSupportedByHost(f"libvirt at {host.uri} has no secret driver; "
                                 "encrypted volumes cannot be attached here")
    root = etree.Element("secret", ephemeral="no", private="yes")
    etree.SubElement(root, "description").text = description
    usage_el = etree.SubElement(root, "usage", type="volume")
    etree.SubElement(usage_el, "volume").text = usage
    try:
        secret = host.conn.secretDefineXML(etree.tostring(root, encoding="unicode"))
        secret.setValue(passphrase)
    except libvirt.libvirtError as exc:
        raise EncryptionError(f"defining secret {usage}: {exc}") from exc
    return secret.UUIDString()


def set_value(host: Host, usage: str, passphrase: bytes) -> str:
    """(Re)set the passphrase of the existing secret ``usage``; return its uuid.

    A crash between secretDefineXML and setValue leaves a secret without a
    value; a re-run that finds the secret sets the value again instead of
    trusting it.
    """
    try:
        secret = host.conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_VOLUME, usage)
        secret.setValue(passphrase)
    except libvirt.libvirtError as exc:
        raise EncryptionError(f"setting the value of secret {usage}: {exc}") from exc
    return secret.UUIDString()


def undefine(host: Host, usage: str) -> bool:
    """Remove the secret; True if there was one."""
    if not host.supports_secrets:
        return False
    try:
        host.conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_VOLUME, usage).undefine()
        return True
    except libvirt.libvirtError as exc:
        if error_code(exc) == libvirt.VIR_ERR_NO_SECRET:
            return False
        raise EncryptionError(f"undefining secret {usage}: {exc}") from exc
