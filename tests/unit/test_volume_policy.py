"""What a spec's volumes may reach on the host: [volumes] allowed_paths, [encryption]
key_dir and the key file rules, against real files, links, FIFOs and device nodes.

Every refusal names the field, the value (and what it resolves to) and the option
that would allow it. Nothing is opened by the spec check, so a FIFO or a device
never blocks it; ``read_key_file`` checks again on the descriptor it reads.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from spawnflow.exceptions import EncryptionError
from spawnflow.flows.policy import volume_refusals
from spawnflow.flows.spec import parse_spec
from spawnflow.virt import secrets
from spawnflow.virt.host import Host
from tests.helpers import load_conf, new_uuid

KEY = b"correct horse battery staple\n"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Path]:
    vols = tmp_path / "vols"
    vols.mkdir()
    (vols / "v.raw").write_bytes(bytes(4096))
    keys = tmp_path / "keys"
    keys.mkdir()
    key = keys / "v.key"
    key.write_bytes(KEY)
    os.chmod(key, 0o600)
    (tmp_path / "state").mkdir()
    return {"tmp": tmp_path, "vols": vols, "keys": keys, "key": key}


def conf_for(env: dict[str, Path], allowed: str | None = None, **groups):
    volumes = {"allowed_paths": allowed if allowed is not None else env["vols"]}
    merged = {"volumes": volumes, "encryption": {"key_dir": env["keys"]}}
    for group, options in groups.items():
        merged.setdefault(group, {}).update(options)
    return load_conf(env["tmp"], **merged)


def spec_with(*volumes: dict):
    full = []
    for index, volume in enumerate(volumes):
        entry = {"id": new_uuid(), "device": "vd" + "bcdefgh"[index], "driver": "local"}
        entry.update(volume)
        full.append(entry)
    return parse_spec(
        {
            "instance": {"uuid": new_uuid(), "name": "vm"},
            "flavor": {"vcpus": 1, "memory_mb": 64, "root_gb": 1},
            "image": {"source": "/srv/images/cirros.qcow2"},
            "volumes": full,
        }
    )


def refused(conf, *volumes: dict, host: Host | None = None) -> dict[str, str]:
    """{field: reason} of the spec's volumes, checked in a thread that must not hang."""
    out: list = []
    worker = threading.Thread(
        target=lambda: out.append(volume_refusals(spec_with(*volumes), conf, host)), daemon=True
    )
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "the volume check blocked"
    return {r.field: r.reason for r in out[0]}


def local(path: Path | str) -> dict:
    return {"path": str(path)}


def encrypted(path: Path | str, key: Path | str) -> dict:
    return {"path": str(path), "encryption": {"format": "luks", "key_file": str(key)}}


# --- local paths -------------------------------------------------------------------


def test_a_file_inside_an_allowed_directory_is_fine(env):
    assert refused(conf_for(env), encrypted(env["vols"] / "v.raw", env["key"])) == {}


def test_default_allows_no_local_volume(env):
    reasons = refused(conf_for(env, allowed=""), local(env["vols"] / "v.raw"))
    assert reasons["volumes.0.path"] == (
        f"'{env['vols'] / 'v.raw'}' is outside [volumes] allowed_paths (empty: no local volumes)"
    )


def test_a_host_file_is_refused_naming_value_and_option(env):
    reasons = refused(conf_for(env), local("/etc/shadow"))
    assert reasons == {
        "volumes.0.path": (f"'/etc/shadow' is outside [volumes] allowed_paths ({env['vols']})")
    }


def test_dotdot_out_of_an_allowed_directory_is_refused(env):
    (env["tmp"] / "outside.raw").write_bytes(bytes(512))
    path = f"{env['vols']}/../outside.raw"
    reasons = refused(conf_for(env), local(path))
    assert reasons["volumes.0.path"].startswith(
        f"'{path}' (resolves to '{env['tmp'] / 'outside.raw'}') is outside [volumes]"
    )


@pytest.mark.parametrize("target", ["/etc/shadow", "/dev/sda", "/dev/zero", "/"])
def test_a_link_inside_an_allowed_directory_is_judged_by_its_target(env, target):
    os.symlink(target, env["vols"] / "evil")
    reasons = refused(conf_for(env), local(env["vols"] / "evil"))
    assert (
        f"(resolves to '{target}') is outside [volumes] allowed_paths" in reasons["volumes.0.path"]
    )


def test_a_link_out_and_back_in_is_fine(env):
    os.symlink(env["vols"] / "v.raw", env["tmp"] / "elsewhere")
    os.symlink(env["tmp"] / "elsewhere", env["vols"] / "twice")
    assert refused(conf_for(env), local(env["vols"] / "twice")) == {}


def test_a_link_to_the_allowed_directory_itself_is_a_directory(env):
    os.symlink(env["vols"], env["vols"] / "self")
    reasons = refused(conf_for(env), local(env["vols"] / "self" / "v.raw"))
    assert reasons == {}  # vols/self/v.raw is vols/v.raw
    reasons = refused(conf_for(env), local(env["vols"] / "self"))
    assert "is outside" in reasons["volumes.0.path"]  # the directory is not inside itself


def test_a_missing_file_outside_is_refused_without_saying_whether_it_exists(env):
    inside = refused(conf_for(env), local(env["vols"] / "nope"))
    outside = refused(conf_for(env), local("/root/.ssh/nope"))
    assert inside["volumes.0.path"].endswith("does not exist")
    assert outside["volumes.0.path"].endswith(f"is outside [volumes] allowed_paths ({env['vols']})")


@pytest.mark.parametrize(
    "make, kind",
    [
        (lambda p: os.mkfifo(p), "a FIFO"),
        (lambda p: os.mknod(p, 0o600 | 0o020000, os.makedev(1, 5)), "a character device"),
        (lambda p: os.mkdir(p), "a directory"),
    ],
)
def test_only_files_and_block_devices_are_volumes(env, make, kind):
    # A FIFO would block qemu (and any reader); /dev/zero planted in an allowed
    # directory would be an endless disk.
    make(env["vols"] / "odd")
    reasons = refused(conf_for(env), local(env["vols"] / "odd"))
    assert reasons["volumes.0.path"] == (
        f"'{env['vols'] / 'odd'}' is {kind}; a local volume must be a regular file or "
        "a block device"
    )


def test_a_socket_is_refused(env):
    import socket

    path = env["vols"] / "sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        reasons = refused(conf_for(env), local(path))
    assert "is a socket" in reasons["volumes.0.path"]


def test_dev_zero_through_a_dev_glob_is_a_character_device(env):
    reasons = refused(conf_for(env, allowed="/dev/*"), local("/dev/zero"))
    assert "'/dev/zero' is a character device" in reasons["volumes.0.path"]


def test_the_event_log_is_refused_even_inside_an_allowed_directory(env):
    # The database elsewhere than state_path, inside a listed directory.
    db = env["vols"] / "events.sqlite"
    db.write_bytes(bytes(512))
    (env["vols"] / "events.sqlite-wal").write_bytes(bytes(512))
    conf = conf_for(env, database={"connection": f"sqlite:///{db}"})
    for path in (db, env["vols"] / "events.sqlite-wal"):
        reasons = refused(conf, local(path))
        assert reasons["volumes.0.path"] == (
            f"'{path}' is inside the event log database ({path}), which a volume may "
            "never reach, whatever [volumes] allowed_paths says"
        )


def test_a_directory_holding_state_path_does_not_make_it_reachable(env):
    # tmp_path holds state/ (state_path), so listing it allows its other files only.
    instance = env["tmp"] / "state" / "instances" / new_uuid()
    instance.mkdir(parents=True)
    (instance / "disk").write_bytes(bytes(512))
    db = env["tmp"] / "state" / "spawnflow.sqlite"
    db.write_bytes(bytes(512))
    os.symlink(db, env["vols"] / "db-link")
    conf = conf_for(env, allowed=f"{env['tmp']}")
    for path in (instance / "disk", db, env["vols"] / "db-link"):
        reason = refused(conf, local(path))["volumes.0.path"]
        assert f"is inside state_path ({env['tmp'] / 'state'})" in reason, reason
    assert refused(conf, local(env["vols"] / "v.raw")) == {}


def test_another_instances_disk_is_refused_with_instances_path_elsewhere(env):
    instances = env["vols"] / "instances"
    disk = instances / new_uuid() / "disk"
    disk.parent.mkdir(parents=True)
    disk.write_bytes(bytes(512))
    base = instances / "_base" / "cirros"
    base.parent.mkdir()
    base.write_bytes(bytes(512))
    conf = conf_for(env, DEFAULT={"instances_path": instances})
    for path in (disk, base):
        assert (
            f"is inside instances_path ({instances})"
            in refused(conf, local(path))["volumes.0.path"]
        )


def test_a_block_device_needs_a_glob(env):
    node = env["vols"] / "dev-free"
    os.mknod(node, 0o600 | 0o060000, os.makedev(7, 250))  # a loop device nobody uses
    reasons = refused(conf_for(env), local(node))
    assert (
        "is a block device, but block devices must match a glob in [volumes] "
        "allowed_paths" in reasons["volumes.0.path"]
    )
    assert refused(conf_for(env, allowed=f"{env['vols']}/dev-*"), local(node)) == {}


def test_a_glob_allows_block_devices_only(env):
    reasons = refused(conf_for(env, allowed=f"{env['vols']}/*"), local(env["vols"] / "v.raw"))
    assert "is a regular file, but matches only the block-device glob" in reasons["volumes.0.path"]


def test_a_glob_is_matched_against_the_resolved_path(env):
    node = env["tmp"] / "dev-free"
    os.mknod(node, 0o600 | 0o060000, os.makedev(7, 251))
    os.symlink(node, env["vols"] / "vol-1")
    # The link's own name matches the glob; its target does not.
    reasons = refused(conf_for(env, allowed=f"{env['vols']}/vol-*"), local(env["vols"] / "vol-1"))
    assert f"(resolves to '{node}') is outside" in reasons["volumes.0.path"]


def _mounted_block_device() -> int:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            major, minor = (int(x) for x in line.split()[2].split(":"))
            if major and os.path.exists(f"/sys/dev/block/{major}:{minor}"):
                return os.makedev(major, minor)
    # Not a skip: the test hosts (and CI) run on a block-device root file system.
    pytest.fail("no file system on this host is mounted from a block device")


def test_a_block_device_the_host_has_mounted_is_refused_whatever_the_glob(env):
    # The root file system's device (which holds the event log too): a glob
    # like /dev/vd* must not hand it to a guest read-write.
    node = env["vols"] / "dev-root"
    os.mknod(node, 0o600 | 0o060000, _mounted_block_device())
    reasons = refused(conf_for(env, allowed=f"{env['vols']}/dev-*"), local(node))
    assert "is a block device holding the file system mounted on" in reasons["volumes.0.path"]


def test_two_links_to_one_file_are_refused(env):
    os.symlink(env["vols"] / "v.raw", env["vols"] / "alias")
    reasons = refused(conf_for(env), local(env["vols"] / "v.raw"), local(env["vols"] / "alias"))
    assert reasons == {
        "volumes.1.path": (
            f"'{env['vols'] / 'alias'}' is '{env['vols'] / 'v.raw'}', the same file as "
            "volumes.0.path"
        )
    }


# --- key files ---------------------------------------------------------------------


def key_reason(env, key: Path | str, **groups) -> str | None:
    return refused(conf_for(env, **groups), encrypted(env["vols"] / "v.raw", key)).get(
        "volumes.0.encryption.key_file"
    )


def test_key_outside_key_dir_is_refused(env):
    assert key_reason(env, "/etc/shadow") == (
        f"'/etc/shadow' is outside [encryption] key_dir ({env['keys']})"
    )


def test_key_link_out_of_key_dir_is_refused(env):
    outside = env["tmp"] / "ssh_host_key"
    outside.write_bytes(KEY)
    os.chmod(outside, 0o600)
    os.symlink(outside, env["keys"] / "link.key")
    assert key_reason(env, env["keys"] / "link.key") == (
        f"'{env['keys'] / 'link.key'}' (resolves to '{outside}') is outside [encryption] "
        f"key_dir ({env['keys']})"
    )
    assert "is outside [encryption] key_dir" in key_reason(env, f"{env['keys']}/../ssh_host_key")


def test_key_dir_itself_is_not_a_key(env):
    assert "is outside [encryption] key_dir" in key_reason(env, env["keys"])


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o700, 0o4600, 0o200])
def test_key_mode_must_be_0400_or_0600(env, mode):
    os.chmod(env["key"], mode)
    assert key_reason(env, env["key"]) == (
        f"'{env['key']}' has mode {mode:04o}; a key file must have mode 0400 or 0600"
    )


def test_key_mode_0400_is_fine(env):
    os.chmod(env["key"], 0o400)
    assert key_reason(env, env["key"]) is None


def test_key_owned_by_another_user_is_refused(env):
    os.chown(env["key"], 65534, 65534)
    assert key_reason(env, env["key"]) == (
        f"'{env['key']}' is owned by uid 65534; a key file must be owned by root"
    )


def test_a_sparse_1gib_key_is_refused_without_reading_it(env):
    big = env["keys"] / "big.key"
    with open(big, "wb") as f:
        f.truncate(1 << 30)
    os.chmod(big, 0o600)
    started = time.monotonic()
    assert key_reason(env, big) == (f"'{big}' has 1073741824 bytes; a key file holds at most 4096")
    with pytest.raises(EncryptionError, match="has 1073741824 bytes"):
        secrets.read_key_file(str(big), str(env["keys"]))
    assert time.monotonic() - started < 2


def test_key_size_limit_is_4096(env):
    env["key"].write_bytes(b"k" * 4096)
    assert key_reason(env, env["key"]) is None
    assert secrets.read_key_file(str(env["key"]), str(env["keys"])) == b"k" * 4096
    env["key"].write_bytes(b"k" * 4097)
    assert "has 4097 bytes" in key_reason(env, env["key"])


def test_key_fifo_is_refused_at_once(env):
    fifo = env["keys"] / "fifo.key"
    os.mkfifo(fifo, 0o600)
    assert key_reason(env, fifo) == f"'{fifo}' is not a regular file"
    done: list = []

    def read() -> None:
        try:
            secrets.read_key_file(str(fifo), str(env["keys"]))
        except EncryptionError as exc:
            done.append(str(exc))

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "read_key_file blocked on a FIFO"
    assert "not a regular file" in done[0]


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.mkdir(), "is not a regular file"),
        (lambda p: None, "does not exist"),
    ],
)
def test_key_empty_dir_or_missing(env, make, reason):
    path = env["keys"] / "odd.key"
    make(path)
    if path.is_file():
        os.chmod(path, 0o600)
    assert key_reason(env, path).endswith(reason)


def test_read_key_file_reads_the_checked_file(env):
    assert secrets.read_key_file(str(env["key"]), str(env["keys"])) == KEY


def test_read_key_file_checks_again_what_it_opened(env):
    # Allowed when the spec was checked; by the time the encryptor reads it,
    # the file is world-readable, then a link out of key_dir.
    assert key_reason(env, env["key"]) is None
    os.chmod(env["key"], 0o644)
    with pytest.raises(EncryptionError, match="has mode 0644"):
        secrets.read_key_file(str(env["key"]), str(env["keys"]))
    outside = env["tmp"] / "other.key"
    outside.write_bytes(KEY)
    os.chmod(outside, 0o600)
    env["key"].unlink()
    os.symlink(outside, env["key"])
    with pytest.raises(EncryptionError, match=r"cannot open key file .* \[encryption\] key_dir"):
        secrets.read_key_file(str(env["key"]), str(env["keys"]))


# --- secrets of network volumes ----------------------------------------------------

ISCSI = {
    "driver": "iscsi",
    "portal": "192.0.2.10:3260",
    "iqn": "iqn.2010-10.org.x:v",
    "lun": 0,
    "auth_username": "chap",
    "secret_uuid": "7f0c0000-0000-4000-8000-0000000000ff",
}


def test_a_secret_without_a_libvirt_connection_is_refused(env):
    reasons = refused(conf_for(env), ISCSI)
    assert reasons == {
        "volumes.0.secret_uuid": (
            "'7f0c0000-0000-4000-8000-0000000000ff' cannot be checked without a libvirt connection"
        )
    }


def test_a_secret_the_host_does_not_have_is_refused(env):
    host = Host("test:///default", "test")  # a driver without secrets
    try:
        reasons = refused(conf_for(env), ISCSI, host=host)
    finally:
        host.close()
    assert reasons["volumes.0.secret_uuid"] == (
        "'7f0c0000-0000-4000-8000-0000000000ff' names no libvirt secret on this host"
    )


def test_network_volumes_without_secrets_need_nothing(env):
    plain = {k: v for k, v in ISCSI.items() if k not in ("auth_username", "secret_uuid")}
    assert refused(conf_for(env), plain, {"driver": "rbd", "pool": "p", "image": "i"}) == {}


def test_what_no_volume_may_reach_follows_the_configuration(env):
    from spawnflow.flows.policy import volume_policy

    state = str(env["tmp"] / "state")
    sqlite = volume_policy(conf_for(env, DEFAULT={"instances_path": "/srv/instances"}))
    assert sqlite.forbidden == (
        ("state_path", state),
        ("instances_path", "/srv/instances"),
        *[
            ("the event log database", f"{state}/spawnflow.sqlite{suffix}")
            for suffix in ("", "-wal", "-shm", "-journal")
        ],
    )
    postgres = volume_policy(
        conf_for(env, database={"connection": "postgresql+psycopg://u:pw@127.0.0.1/db"})
    )
    assert postgres.forbidden == (("state_path", state), ("instances_path", f"{state}/instances"))
    assert postgres.allowed_paths == (str(env["vols"]),)


@pytest.mark.parametrize(
    ("mode", "owner", "why"),
    [(0o777, 0, "writable by anyone"), (0o775, 0, "group-writable"), (0o755, 65534, "not root's")],
)
def test_a_directory_others_can_change_is_refused(env, mode, owner, why) -> None:
    # QEMU opens the path itself, after the check: whoever may swap the file
    # for a link in between could hand the guest any file (here: not root).
    conf = conf_for(env)
    assert refused(conf, local(env["vols"] / "v.raw")) == {}
    os.chown(env["vols"], owner, 0)
    os.chmod(env["vols"], mode)
    reason = refused(conf, local(env["vols"] / "v.raw"))["volumes.0.path"]
    assert "a user other than root can change" in reason, why
    assert str(env["vols"]) in reason


def test_a_sticky_world_writable_directory_is_safe(env) -> None:
    os.chmod(env["vols"], 0o1777)  # like /tmp: others may add, never replace root's file
    assert refused(conf_for(env), local(env["vols"] / "v.raw")) == {}
