"""The trust boundary, tried with hostile but well-formed input on a real host.

Every input of the corpus goes through the real ``spawnflow`` command (a
subprocess, so a traceback or a hang would show) against the real libvirtd.
Each one must be refused with one line on stderr (no traceback), add no build
row, leave the database's content as it was, and leave the host as it was: no
cache entry, instance directory, tap, libvirt secret, nwfilter or domain.

Then a build with a presigned-URL token runs for real (it fails at the image
step and rolls back) and the database file, its WAL, the command's log and an
export are searched for every secret token the corpus used: none is there.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import secrets
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.helpers import make_qcow2, write_conf

pytestmark = pytest.mark.integration

# Every secret the corpus hands in; none may ever be found on disk or in output.
TOKENS = {
    "url_query": "SFTOKENquery" + secrets.token_hex(6),
    "url_fragment": "SFTOKENfrag" + secrets.token_hex(6),
    "url_userinfo": "SFTOKENuser" + secrets.token_hex(6),
    "admin_password": "SFTOKENadmin" + secrets.token_hex(6),
    "auth_password": "SFTOKENauth" + secrets.token_hex(6),
    "db_password": "SFTOKENdb" + secrets.token_hex(6),
}
NAME_ESCAPE = "\x1b]0;pwned\x07"


@dataclass
class Env:
    root: Path
    conf_file: Path
    db: Path
    images: Path
    vols: Path
    keys: Path
    instances: Path
    image: Path
    host: str
    secret_usage_allowed: str
    secret_usage_refused: str
    secret_allowed: str
    secret_refused: str

    def cli(
        self, *args: str, log: Path | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        extra = ["--log-file", str(log)] if log else []
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "spawnflow.cmd.main",
                "--config-file",
                str(self.conf_file),
                *extra,
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def spec(self, **overrides: object) -> dict:
        spec: dict = {
            "instance": {"uuid": str(uuid.uuid4()), "name": "corpus"},
            "flavor": {"vcpus": 1, "memory_mb": 64, "root_gb": 0},
            "image": {"source": str(self.image), "disk_format": "qcow2"},
        }
        spec.update(overrides)
        return spec

    def volume(self, **fields: object) -> dict:
        return {"id": str(uuid.uuid4()), "driver": "local", "device": "vdb", **fields}

    def write(self, name: str, data: object | str) -> Path:
        path = self.root / "inputs" / name
        path.parent.mkdir(exist_ok=True)
        text = data if isinstance(data, str) else yaml.safe_dump(data)
        path.write_text(text)
        return path


def _define_secret(conn, usage: str, kind: str = "iscsi") -> str:
    xml = (
        f"<secret ephemeral='no' private='yes'><usage type='{kind}'>"
        f"<target>{usage}</target></usage></secret>"
    )
    return conn.secretDefineXML(xml).UUIDString()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, libvirt_uri: str, libvirt_conn) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("corpus")
    images, vols, keys = root / "images", root / "vols", root / "keys"
    for directory in (images, vols, keys):
        directory.mkdir()
    keys.chmod(0o700)
    # The operator allowed all of vols, and put the instances and the event log
    # inside it anyway: neither may become reachable through the allow list.
    instances = vols / "instances"
    db = vols / "db" / "spawnflow.sqlite"
    db.parent.mkdir()
    image = make_qcow2(images / "cirros.qcow2", "16M")
    tag = secrets.token_hex(4)
    allowed_usage, refused_usage = f"corpus-allowed-{tag}", f"corpus-refused-{tag}"
    secret_allowed = _define_secret(libvirt_conn, allowed_usage)
    secret_refused = _define_secret(libvirt_conn, refused_usage)
    conf_file = write_conf(
        root / "spawnflow.conf",
        DEFAULT={
            "state_path": root / "state",
            "instances_path": instances,
            "host": f"corpus-{tag}",
        },
        database={"connection": f"sqlite:///{db}"},
        libvirt={"connection_uri": libvirt_uri, "virt_type": "qemu"},
        firewall={"driver": "nwfilter"},
        images={
            "allowed_sources": f"{images},https://images.example.test/pub/,http://127.0.0.1:9/pub/"
        },
        volumes={
            "allowed_paths": f"{vols},/dev/spawnflow-corpus-*",
            "allowed_secret_usages": allowed_usage,
        },
        encryption={"key_dir": keys},
    )
    made = Env(
        root=root,
        conf_file=conf_file,
        db=db,
        images=images,
        vols=vols,
        keys=keys,
        instances=instances,
        image=image,
        host=f"corpus-{tag}",
        secret_usage_allowed=allowed_usage,
        secret_usage_refused=refused_usage,
        secret_allowed=secret_allowed,
        secret_refused=secret_refused,
    )
    # An empty, upgraded database, so that every refusal below is a refusal of
    # the input and not of a missing database.
    result = made.cli("db", "upgrade")
    assert result.returncode == 0, result.stderr
    try:
        yield made
    finally:
        for secret_uuid in (secret_allowed, secret_refused):
            libvirt_conn.secretLookupByUUIDString(secret_uuid).undefine()


# -- what "nothing changed" means --------------------------------------------------------


def _db_content(db: Path) -> str:
    """A digest of every row of every table (the file's bytes may change on a checkpoint)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
    finally:
        conn.close()


def _build_count(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM builds").fetchone()[0]
    finally:
        conn.close()


def _host_snapshot(env: Env, conn) -> dict[str, object]:
    files = []
    for top in (env.root / "state", env.instances):
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                path = Path(dirpath, name)
                if path.suffix == ".lock" or path.parent.name == "locks":
                    continue  # lock files are never deleted, by design
                files.append(str(path))
    links = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    return {
        "files": sorted(files),
        "links": sorted(line.split(":")[1].strip() for line in links.splitlines()),
        "secrets": sorted(conn.listSecrets()),
        "filters": sorted(conn.listNWFilters()),
        "domains": sorted(d.UUIDString() for d in conn.listAllDomains()),
    }


def _one_line_refusal(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert message, "refused without saying why"
    for char in message:  # terminal-safe: no raw control or bidi character
        assert char.isprintable(), repr(message)
    return message


# -- the corpus ---------------------------------------------------------------------------
# Each case returns the command-line arguments (after --config-file); the words
# the refusal must contain are checked case-insensitively.

Case = Callable[[Env], list[str]]
CASES: dict[str, tuple[Case, tuple[str, ...]]] = {}


def case(name: str, *words: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES[name] = (fn, words)
        return fn

    return register


def spawn(env: Env, name: str, spec: dict | str) -> list[str]:
    return ["spawn", "--no-wait", str(env.write(name + ".yaml", spec))]


def _local_volume_case(name: str, path: Callable[[Env], str], *words: str) -> None:
    @case(f"volume-{name}", "volumes.0.path", *words)
    def build(env: Env) -> list[str]:
        return spawn(env, f"volume-{name}", env.spec(volumes=[env.volume(path=path(env))]))


def _image_case(name: str, source: Callable[[Env], str], *words: str) -> None:
    @case(f"image-{name}", "image.source", *words)
    def build(env: Env) -> list[str]:
        spec = env.spec()
        spec["image"] = {"source": source(env), "disk_format": "raw"}
        return spawn(env, f"image-{name}", spec)


def _fifo(path: Path) -> str:
    if not path.exists():
        os.mkfifo(path)
    return str(path)


def _symlink(link: Path, target: str) -> str:
    if not link.is_symlink():
        link.symlink_to(target)
    return str(link)


def _file(path: Path, data: bytes = b"x" * 512, mode: int = 0o600) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return str(path)


# Local volumes: outside the list, the host's secrets and disks, our own files.
_local_volume_case("etc-shadow", lambda e: "/etc/shadow", "allowed_paths")
_local_volume_case(
    "dev-block", lambda e: "/dev/vda" if os.path.exists("/dev/vda") else "/dev/sda", "allowed_paths"
)
_local_volume_case("dev-zero", lambda e: "/dev/zero")
_local_volume_case("database", lambda e: str(e.db))
_local_volume_case("database-wal", lambda e: str(e.db) + "-wal")
_local_volume_case(
    "instance-disk", lambda e: _file(e.instances / "0c6f6a55-1e0c-4a52-b8f4-3d09a2b6d5a1" / "disk")
)
_local_volume_case("base-image", lambda e: _file(e.instances / "_base" / ("0" * 64)))
_local_volume_case("state-path", lambda e: _file(e.root / "state" / "x.img"))
_local_volume_case("symlink-out", lambda e: _symlink(e.vols / "shadow.img", "/etc/shadow"))
_local_volume_case("symlink-to-db", lambda e: _symlink(e.vols / "db.img", str(e.db)))
_local_volume_case("dotdot", lambda e: f"{e.vols}/../../../../etc/shadow")
_local_volume_case("dotdot-inside", lambda e: f"{e.vols}/db/../db/spawnflow.sqlite")
_local_volume_case("fifo", lambda e: _fifo(e.vols / "fifo.img"))
_local_volume_case("symlink-dev-zero", lambda e: _symlink(e.vols / "zero.img", "/dev/zero"))
_local_volume_case("directory", lambda e: str(e.vols))
_local_volume_case("missing", lambda e: str(e.vols / "nope.img"))
_local_volume_case("relative", lambda e: "vols/x.img")

# Image sources.
_image_case("etc-shadow", lambda e: "/etc/shadow", "allowed_sources")
_image_case("file-url-ssh-key", lambda e: "file:///root/.ssh/id_rsa", "allowed_sources")
_image_case("dev-zero", lambda e: "/dev/zero")
_image_case("fifo-inside", lambda e: _fifo(e.images / "fifo.img"))
_image_case("dev-zero-via-link", lambda e: _symlink(e.images / "zero.img", "/dev/zero"))
_image_case("symlink-out", lambda e: _symlink(e.images / "passwd.img", "/etc/passwd"))
_image_case("dotdot", lambda e: f"{e.images}/../keys/x")
_image_case("directory", lambda e: str(e.images))
_image_case("metadata", lambda e: "http://169.254.169.254/latest/meta-data/iam")
_image_case("loopback", lambda e: "http://127.0.0.1:8080/pub/x.img")
_image_case("loopback-v6", lambda e: "http://[::1]/pub/x.img")
_image_case("v4-mapped", lambda e: "http://[::ffff:127.0.0.1]/pub/x.img")
_image_case("decimal-ip", lambda e: "http://2130706433/pub/x.img")
_image_case("localhost", lambda e: "http://localhost/pub/x.img")
_image_case("gce-metadata", lambda e: "http://metadata.google.internal/computeMetadata/v1/")
_image_case("file-relative", lambda e: "file:images/cirros.qcow2")
_image_case("file-remote-host", lambda e: "file://otherhost/etc/passwd")
_image_case("percent-nul", lambda e: f"file://{e.images}/cirros.qcow2%00.txt")
_image_case("prefix-host-suffix", lambda e: "https://images.example.test.evil.example/pub/x")
_image_case("prefix-path-boundary", lambda e: "https://images.example.test/public/x.img")
_image_case("prefix-dotdot", lambda e: "https://images.example.test/pub/../private/x.img")
_image_case("prefix-encoded-dotdot", lambda e: "https://images.example.test/pub/%2e%2e/x.img")
_image_case("prefix-scheme", lambda e: "http://images.example.test/pub/x.img")
_image_case("prefix-port", lambda e: "https://images.example.test:8443/pub/x.img")
_image_case("ftp", lambda e: "ftp://images.example.test/pub/x.img")
_image_case("missing-local", lambda e: str(e.images / "no-such.qcow2"), "does not exist")
_image_case("idn-lookalike", lambda e: "https://images.exämple.test/pub/x.img", "punycode")
_image_case("event-log", lambda e: str(e.db))
_image_case(
    "userinfo-token", lambda e: f"https://{TOKENS['url_userinfo']}@images.example.test/pub/x.img"
)


@case("queue-url-token", "image.source", "never stored")
def _queue_token(env: Env) -> list[str]:
    # Allowed, but a queued build runs from the stored spec, which has no token.
    spec = env.spec()
    spec["image"] = {
        "source": "https://images.example.test/pub/x.img?X-Amz-Signature=" + TOKENS["url_query"],
        "disk_format": "qcow2",
    }
    return spawn(env, "queue-url-token", spec)


# Key files.
def _key_case(name: str, path: Callable[[Env], str], *words: str) -> None:
    @case(f"key-{name}", "volumes.0.encryption.key_file", *words)
    def build(env: Env) -> list[str]:
        volume_path = _file(env.vols / f"luks-{name}.img", b"\0" * 4096)
        volume = env.volume(path=volume_path, encryption={"format": "luks", "key_file": path(env)})
        return spawn(env, f"key-{name}", env.spec(volumes=[volume]))


def _sparse(path: Path, size: int) -> str:
    with open(path, "wb") as f:
        f.truncate(size)
    path.chmod(0o600)
    return str(path)


def _owned_by_nobody(path: Path) -> str:
    _file(path)
    os.chown(path, 65534, 65534)
    return str(path)


_key_case("outside", lambda e: _file(e.root / "host-key", mode=0o600), "key_dir")
_key_case("ssh-host-key", lambda e: "/etc/ssh/ssh_host_ed25519_key", "key_dir")
_key_case("sparse-1g", lambda e: _sparse(e.keys / "big.key", 1 << 30))
_key_case("fifo", lambda e: _fifo(e.keys / "fifo.key"))
_key_case("world-readable", lambda e: _file(e.keys / "open.key", mode=0o644))
_key_case("not-root", lambda e: _owned_by_nobody(e.keys / "nobody.key"))
_key_case("symlink-out", lambda e: _symlink(e.keys / "link.key", str(e.db)))
_key_case("dotdot", lambda e: f"{e.keys}/../vols/db/spawnflow.sqlite")


# Network volumes: libvirt secrets.
def _secret_case(name: str, secret: Callable[[Env], str], *words: str) -> None:
    @case(f"secret-{name}", "volumes.0.secret_uuid", *words)
    def build(env: Env) -> list[str]:
        volume = {
            "id": str(uuid.uuid4()),
            "driver": "iscsi",
            "device": "vdb",
            "portal": "192.0.2.10:3260",
            "iqn": "iqn.2010-10.org.example:vol",
            "lun": 1,
            "auth_username": "chap",
            "secret_uuid": secret(env),
        }
        return spawn(env, f"secret-{name}", env.spec(volumes=[volume]))


_secret_case("missing", lambda e: str(uuid.uuid4()))
_secret_case("usage-not-allowed", lambda e: e.secret_refused, "allowed_secret_usages")


# Secret fields, names and shapes.
@case("admin-password", "admin_password")
def _admin_password(env: Env) -> list[str]:
    return spawn(env, "admin-password", env.spec(admin_password=TOKENS["admin_password"]))


@case("auth-password", "auth_password")
def _auth_password(env: Env) -> list[str]:
    volume = {
        "id": str(uuid.uuid4()),
        "driver": "iscsi",
        "device": "vdb",
        "portal": "192.0.2.10:3260",
        "iqn": "iqn.2010-10.org.example:vol",
        "lun": 1,
        "auth_username": "chap",
        "secret_uuid": env.secret_allowed,
        "auth_password": TOKENS["auth_password"],
    }
    return spawn(env, "auth-password", env.spec(volumes=[volume]))


def _name_case(name: str, instance_name: str) -> None:
    @case(f"name-{name}", "instance.name")
    def build(env: Env) -> list[str]:
        return spawn(
            env,
            f"name-{name}",
            env.spec(instance={"uuid": str(uuid.uuid4()), "name": instance_name}),
        )


_name_case("osc-escape", NAME_ESCAPE)
_name_case("bidi-override", "web\u202e1-gnp.exe")
_name_case("zero-width", "web\u200b1")
_name_case("bom", "\ufeffweb1")
_name_case("c1-control", "web\x9b1")
_name_case("slash", "../../etc")


@case("spec-nested-100k", "nested too deeply")
def _nested(env: Env) -> list[str]:
    return spawn(env, "nested", "instance: " + "[" * 100_000 + "]" * 100_000 + "\n")


@case("spec-nested-json", "nested too deeply")
def _nested_json(env: Env) -> list[str]:
    path = env.write("nested.json", '{"a":' * 100_000 + "1" + "}" * 100_000)
    return ["spawn", "--no-wait", str(path)]


@case("spec-billion-laughs", "aliases")
def _laughs(env: Env) -> list[str]:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return spawn(env, "laughs", "\n".join(lines) + "\n")


@case("spec-huge", "larger than")
def _huge(env: Env) -> list[str]:
    return spawn(env, "huge", "# " + "x" * (2 << 20) + "\n")


@case("spec-base60-number", "plain decimal")
def _base60(env: Env) -> list[str]:
    spec = yaml.safe_dump(env.spec()).replace("vcpus: 1", "vcpus: 1" + ":59" * 200_000)
    return spawn(env, "base60", spec)


@case("spec-not-mapping", "mapping")
def _not_mapping(env: Env) -> list[str]:
    return spawn(env, "list", "- 1\n- 2\n")


@case("spec-binary", "spec")
def _binary(env: Env) -> list[str]:
    path = env.root / "inputs" / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00\x01garbage")
    return ["spawn", "--no-wait", str(path)]


@case("spec-vcpus-huge", "flavor.vcpus")
def _vcpus(env: Env) -> list[str]:
    return spawn(env, "vcpus", env.spec(flavor={"vcpus": 10**30, "memory_mb": 64, "root_gb": 0}))


@case("spec-checksum-garbage", "image.checksum")
def _checksum(env: Env) -> list[str]:
    spec = env.spec()
    spec["image"]["checksum"] = "sha256:" + "z" * 64
    return spawn(env, "checksum", spec)


# -- history import ------------------------------------------------------------------------


def _export(env: Env) -> dict:
    """The export of the corpus's one real build (made by test_secret_tokens_*)."""
    path = env.root / "real-export.json"
    return json.loads(path.read_text())


def _import_case(name: str, mutate: Callable[[Env, dict], object], *words: str) -> None:
    @case(f"import-{name}", *words)
    def build(env: Env) -> list[str]:
        doc = mutate(env, _export(env))
        path = env.root / "inputs" / f"import-{name}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        return ["history", "import", str(path)]


def _fresh_build_id(doc: dict) -> dict:
    """The same document under a new build id, every other id kept: the flows and
    atoms it names now belong to another build already in the target."""
    old, new = doc["build"]["build_id"], str(uuid.uuid4())
    return json.loads(json.dumps(doc).replace(old, new))


def _first_event(doc: dict, kind: str) -> dict:
    return next(e for e in doc["events"] if e["kind"] == kind)


def _set(doc: dict, fn: Callable[[dict], None]) -> dict:
    fn(doc)
    return doc


_import_case("already-there", lambda e, d: d, "already")
_import_case("foreign-flow-and-atom-ids", lambda e, d: _fresh_build_id(d))
_import_case(
    "time-1e12",
    lambda e, d: _set(_fresh_all(d), lambda x: _first_event(x, "atom").__setitem__("ts", 1e12)),
)
_import_case(
    "payload-list",
    lambda e, d: _set(
        _fresh_all(d), lambda x: _first_event(x, "atom").__setitem__("payload", [1, 2])
    ),
)
_import_case(
    "atom-without-parent",
    lambda e, d: _set(
        _fresh_all(d),
        lambda x: (
            _first_event(x, "atom")["payload"].pop("parent", None)
            or _first_event(x, "atom")["payload"].pop("parent_uuid", None)
        ),
    ),
)
_import_case(
    "events-not-list", lambda e, d: _set(_fresh_all(d), lambda x: x.__setitem__("events", {"a": 1}))
)
_import_case("nested-100k", lambda e, d: '{"a":' * 100_000 + "1" + "}" * 100_000)
_import_case("not-json", lambda e, d: "this is not json")
_import_case("empty", lambda e, d: "")
_import_case(
    "wrong-format",
    lambda e, d: _set(_fresh_all(d), lambda x: x.__setitem__("format", "something-else")),
)
_import_case(
    "newer-version", lambda e, d: _set(_fresh_all(d), lambda x: x.__setitem__("version", 99))
)
_import_case(
    "nan-time", lambda e, d: json.dumps(_fresh_all(d)).replace('"ts": ', '"ts": NaN, "was": ', 1)
)
_import_case(
    "escape-in-name",
    lambda e, d: _set(
        _fresh_all(d),
        lambda x: (
            x["build"].__setitem__("instance_name", NAME_ESCAPE)
            or x.__setitem__("version", "1\x1b[2J")
        ),
    ),
)


def _fresh_all(doc: dict) -> dict:
    """Every uuid of the document replaced by a new one, consistently: an import of
    it would be accepted unless the mutation applied after breaks it."""
    text = json.dumps(doc)
    seen: dict[str, str] = {}

    def swap(match: re.Match) -> str:
        return seen.setdefault(match.group(0), str(uuid.uuid4()))

    return json.loads(
        re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", swap, text)
    )


# -- other commands -------------------------------------------------------------------------


@case("history-db-password", "***")
def _db_password(env: Env) -> list[str]:
    return [
        "history",
        "list",
        "--db",
        f"postgresql+psycopg://spawnflow:{TOKENS['db_password']}@127.0.0.1:1/x",
    ]


@case("history-db-malformed-url")
def _db_malformed(env: Env) -> list[str]:
    return [
        "history",
        "list",
        "--db",
        f"postgresql://spawnflow:{TOKENS['db_password']}@127.0.0.1:notaport/x",
    ]


@case("history-show-escape-id", "no build")
def _show_escape(env: Env) -> list[str]:
    return ["history", "show", "ab\x1b]0;pwned\x07"]


@case("history-since-garbage", "since")
def _since(env: Env) -> list[str]:
    return ["history", "list", "--since", "yesterday\x1b[2J"]


@case("event-unknown-instance")
def _event(env: Env) -> list[str]:
    return ["event", "deliver", str(uuid.uuid4()), "network-vif-plugged", str(uuid.uuid4())]


# -- the tests ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_build(env: Env) -> dict:
    """One real build whose image URL carries a token in its query and fragment;
    it fails at the image step (nothing listens) and rolls back. Its export is
    the seed of the import cases."""
    source = (
        f"http://127.0.0.1:9/pub/cirros.img?X-Amz-Signature={TOKENS['url_query']}"
        f"#{TOKENS['url_fragment']}"
    )
    spec = env.spec()
    spec["image"] = {"source": source, "disk_format": "qcow2"}
    log = env.root / "spawn.log"
    result = env.cli("spawn", str(env.write("real.yaml", spec)), log=log)
    output = result.stdout + result.stderr
    assert "ROLLED_BACK" in output, output
    conn = sqlite3.connect(f"file:{env.db}?mode=ro", uri=True)
    (build_id,) = conn.execute("SELECT build_id FROM builds").fetchone()
    conn.close()
    export = env.root / "real-export.json"
    exported = env.cli("history", "export", build_id, "-o", str(export))
    assert exported.returncode == 0, exported.stderr
    return {"build_id": build_id, "output": output + exported.stdout + exported.stderr, "log": log}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input_is_refused_cleanly(
    name: str, env: Env, real_build: dict, libvirt_conn
) -> None:
    make, words = CASES[name]
    argv = make(env)
    before = (_build_count(env.db), _db_content(env.db), _host_snapshot(env, libvirt_conn))
    result = env.cli(*argv)
    message = _one_line_refusal(result)
    for word in words:
        assert word.lower() in message.lower(), message
    for token in TOKENS.values():
        assert token not in result.stdout + result.stderr
    after = (_build_count(env.db), _db_content(env.db), _host_snapshot(env, libvirt_conn))
    assert after == before, f"{name} changed the database or the host"


def test_corpus_size() -> None:
    assert len(CASES) >= 60, len(CASES)


def test_secret_tokens_never_reach_disk_or_output(env: Env, real_build: dict) -> None:
    # Run every case once more in one go (they are refused), so their inputs
    # also had the chance to reach the log, then look everywhere.
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        outputs = list(
            pool.map(lambda fn: env.cli(*fn(env)), [make for make, _words in CASES.values()])
        )
    text = real_build["output"] + "".join(r.stdout + r.stderr for r in outputs)
    blobs = {"command output": text.encode()}
    for path in (env.db, Path(f"{env.db}-wal"), real_build["log"], env.root / "real-export.json"):
        if path.exists():
            blobs[str(path)] = path.read_bytes()
    for where, blob in blobs.items():
        for name, token in TOKENS.items():
            assert token.encode() not in blob, f"{name} token found in {where}"
    # The masked URL is there: the history still says where the image came from.
    assert b"127.0.0.1:9/pub/cirros.img" in blobs[str(env.db)] + blobs.get(f"{env.db}-wal", b"")
