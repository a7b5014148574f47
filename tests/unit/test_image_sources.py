"""[images] allowed_sources: URL prefix matching, address checks and local containment.

Real files, links, FIFOs and the real resolver (getaddrinfo) for numeric and
loopback names; names under example.com go through a table instead of DNS, so
the tests do not depend on the network.
"""

from __future__ import annotations

import os

import pytest

from spawnflow.flows.policy import image_refusals
from spawnflow.flows.spec import parse_spec
from spawnflow.virt.image_fetch import _reason
from spawnflow.virt.image_sources import (
    AllowedSources,
    SourceRefused,
    getaddrinfo_resolver,
    is_masked,
    special_address,
)
from spawnflow.virt.images import allowed_sources
from tests.helpers import load_conf

ENTRIES = ["https://img.example.com/images/", "http://10.0.0.5:8080/pub", "http://127.0.0.1:9000/"]
DNS = {
    "img.example.com": ["203.0.113.7"],
    "xn--bcher-kva.example": ["203.0.113.8"],
    "rebind.example.com": ["203.0.113.9", "127.0.0.1"],
}


def table(host: str, _port: int) -> list[str]:
    return DNS.get(host.lower().rstrip("."), [])


@pytest.fixture
def allowed() -> AllowedSources:
    return AllowedSources(ENTRIES)


@pytest.mark.parametrize(
    "url",
    [
        "https://img.example.com/images/cirros.qcow2",
        "https://IMG.Example.COM/images/cirros.qcow2",  # host case
        "https://img.example.com./images/cirros.qcow2",  # trailing dot
        "https://img.example.com:443/images/cirros.qcow2",  # default port spelled
        "https://img.example.com/images/sub/cirros.qcow2?X-Amz-Signature=abc",
        "http://10.0.0.5:8080/pub/x.raw",  # RFC 1918: named, allowed
        "http://127.0.0.1:9000/x.qcow2",  # loopback, named by its IP
    ],
)
def test_allowed_urls(allowed, url):
    allowed.check(url, resolver=table)


@pytest.mark.parametrize(
    "url, reason",
    [
        ("https://img.example.com.evil/images/x", "outside"),  # string-prefix trick
        ("https://img.example.com@evil.example/images/x", "credentials"),
        ("https://evil.example/img.example.com/images/x", "outside"),
        ("http://img.example.com/images/x", "outside"),  # scheme
        ("https://img.example.com:8443/images/x", "outside"),  # port
        ("https://img.example.com/imagesX/x", "outside"),  # not the directory
        ("https://img.example.com/images", "outside"),  # the prefix itself
        ("https://img.example.com/images/", "outside"),
        ("https://img.example.com/images/../secret/x", "'..' segment"),
        ("https://img.example.com/images/%2e%2e/secret/x", "'..' segment"),
        ("https://img.example.com/images/%2E%2e%2fsecret", "'..' segment"),
        ("https://img.example.com/images/./x", "segment"),
        ("https://img.example.com/images/x%00.qcow2", "NUL"),
        ("https://img.example.com/images/..%5csecret", "backslash"),
        ("http://10.0.0.5:8080/public/x", "outside"),  # /pub is a directory
        ("http://127.0.0.1:9001/x", "outside"),
        ("http://localhost:9000/x", "outside"),  # another spelling
        ("http://2130706433:9000/x", "legacy numeric"),  # decimal 127.0.0.1
        ("http://0x7f.1:9000/x", "legacy numeric"),
        ("http://127.1:9000/x", "legacy numeric"),
        ("http://[::ffff:127.0.0.1]:9000/x", "outside"),  # v4-mapped spelling
        ("http://169.254.169.254/latest/meta-data/", "outside"),
        ("ftp://img.example.com/images/x", "not an http"),
        ("https://img.example.com:99999/images/x", "not a valid URL"),
    ],
)
def test_refused_urls(allowed, url, reason):
    with pytest.raises(SourceRefused, match=reason):
        allowed.check(url, resolver=table)


def test_idn_hosts_must_be_given_as_punycode():
    # Python's codec is IDNA 2003 and requests' IDNA 2008: "strasse" and
    # "straße" are one host to the first and two to the second, so the host
    # checked would not be the host connected to. Only the A-label is taken.
    allowed = AllowedSources(["https://xn--bcher-kva.example/"])
    allowed.check("https://xn--bcher-kva.example/x.qcow2", resolver=table)
    allowed.check("https://XN--BCHER-KVA.example/x.qcow2", resolver=table)
    for host in ("bücher.example", "BÜCHER.example", "straße.example"):
        with pytest.raises(SourceRefused, match="punycode"):
            allowed.check(f"https://{host}/x.qcow2", resolver=table)
    with pytest.raises(ValueError, match="punycode"):  # a bad entry is a config error
        AllowedSources(["https://straße.example/"])
    with pytest.raises(SourceRefused):
        allowed.check("https://bucher.example/x.qcow2", resolver=table)


@pytest.mark.parametrize(
    "address, kind",
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fd00:ec2::254", "metadata"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "metadata"),
        ("64:ff9b::7f00:1", "loopback"),
        ("2002:7f00:1::", "loopback"),  # NAT64, 6to4
        ("0.1.2.3", "0.0.0.0/8"),
        ("224.0.0.1", "multicast"),
        ("100.100.100.200", "metadata"),
    ],
)
def test_special_addresses(address, kind):
    assert kind in special_address(address)


@pytest.mark.parametrize(
    "address",
    ["10.0.0.5", "192.168.1.1", "172.16.0.1", "203.0.113.7", "2001:db8::1", "fd12:3456::1"],
)
def test_ordinary_addresses(address):
    assert special_address(address) is None


def test_name_resolving_to_loopback_is_refused_even_if_listed():
    allowed = AllowedSources(["https://rebind.example.com/"])
    with pytest.raises(SourceRefused, match=r"127.0.0.1, a loopback address"):
        allowed.check("https://rebind.example.com/x", resolver=table)


def test_real_resolver_sees_numeric_and_loopback_names():
    assert "127.0.0.1" in getaddrinfo_resolver("2130706433", 80)  # why legacy forms are refused
    allowed = AllowedSources(
        ["http://localhost:9000/", "http://ip6-localhost:9000/", "http://vm:9000/"]
    )
    allowed.check("http://localhost:9000/x")  # names localhost: allowed
    with pytest.raises(SourceRefused, match="loopback"):
        allowed.check("http://vm:9000/x")  # /etc/hosts maps it to 127.0.0.1


def test_metadata_refused_unless_named():
    with pytest.raises(SourceRefused):
        AllowedSources([]).check("http://169.254.169.254/x")
    AllowedSources(["http://169.254.169.254/"]).check("http://169.254.169.254/x")
    assert (
        AllowedSources(["http://169.254.169.254/"]).address_refusal(
            "http://169.254.169.254/x", "169.254.169.254"
        )
        is None
    )
    assert "metadata" in AllowedSources(["https://img.example.com/"]).address_refusal(
        "https://img.example.com/x", "169.254.169.254"
    )


def test_redirect_must_stay_inside(allowed):
    assert (
        allowed.check_redirect("https://img.example.com/images/a", "b?sig=1")
        == "https://img.example.com/images/b?sig=1"
    )
    for target in (
        "http://127.0.0.1:9001/x",
        "https://img.example.com/other/x",
        "http://169.254.169.254/latest/meta-data/?token=s3cret",
    ):
        with pytest.raises(SourceRefused, match="redirects to") as err:
            allowed.check_redirect("https://img.example.com/images/a", target)
        assert "s3cret" not in str(err.value)


# --- local paths -------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    (images / "good.qcow2").write_bytes(b"x")
    (images / "sub" / "nested.raw").write_bytes(b"x")
    (tmp_path / "secret").write_bytes(b"secret")
    (images / "link-in.qcow2").symlink_to(images / "good.qcow2")
    (images / "link-out.qcow2").symlink_to(tmp_path / "secret")
    (images / "shadow").symlink_to("/etc/shadow")
    (images / "zero.raw").symlink_to("/dev/zero")
    os.mkfifo(images / "pipe.raw")
    return tmp_path, AllowedSources([str(images)])


def test_missing_local_source_is_refused(tree):
    # Not left to the fetch: a missing path plus the checksum of a cached image
    # would hand out that image without access to any source of it.
    root, allowed = tree
    with pytest.raises(SourceRefused, match="does not exist"):
        allowed.check(str(root / "images" / "not-yet-there.qcow2"))


@pytest.mark.parametrize("name", ["good.qcow2", "sub/nested.raw", "link-in.qcow2"])
def test_local_allowed(tree, name):
    root, allowed = tree
    directory, _path = allowed.check(str(root / "images" / name))
    assert directory == str(root / "images")
    assert allowed.check((root / "images" / name).as_uri())[1] == str(root / "images" / name)


@pytest.mark.parametrize(
    "name, reason",
    [
        ("link-out.qcow2", "outside"),
        ("shadow", "outside"),
        ("zero.raw", "outside"),
        ("pipe.raw", "not a regular file"),
        ("sub", "not a regular file"),
        ("../secret", "outside"),
        ("sub/../../secret", "outside"),
        ("", "outside"),
    ],
)
def test_local_refused(tree, name, reason):
    root, allowed = tree
    with pytest.raises(SourceRefused, match=reason):
        allowed.check(str(root / "images") + "/" + name)


@pytest.mark.parametrize(
    "source",
    [
        "file:relative/x.qcow2",
        "file://otherhost/x.qcow2",
        "file:/images/x",
        "file:///images/x%00.qcow2",
    ],
)
def test_file_url_forms_refused(source):
    with pytest.raises(SourceRefused):
        AllowedSources(["/images"]).check(source)


def test_never_sources_whatever_the_list_says(tmp_path):
    (tmp_path / "instances").mkdir()
    (tmp_path / "instances" / "disk").write_bytes(b"x")
    allowed = AllowedSources([str(tmp_path)], never=[str(tmp_path / "instances")])
    with pytest.raises(SourceRefused, match="spawnflow's own state"):
        allowed.check(str(tmp_path / "instances" / "disk"))


def test_is_masked():
    assert is_masked("https://h/x?***") and is_masked("https://h/x#***")
    assert not is_masked("https://h/x?a=1") and not is_masked("/srv/images/x")


# --- the policy: before anything is written ----------------------------------


def _spec(source: str):
    return parse_spec(
        {
            "instance": {"uuid": "6f1c2a7e-4a57-4f0e-9a49-3d0f7c0d1a01", "name": "vm"},
            "flavor": {"vcpus": 1, "memory_mb": 64, "root_gb": 0},
            "image": {"source": source},
        }
    )


def test_image_refusals_name_field_value_and_option(tmp_path):
    conf = load_conf(
        tmp_path, images={"allowed_sources": f"{tmp_path}/images,https://img.example.com/"}
    )
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.qcow2").write_bytes(b"x")
    assert image_refusals(_spec(f"{tmp_path}/images/a.qcow2"), conf) == []
    (refusal,) = image_refusals(_spec("/etc/shadow"), conf)
    assert refusal.field == "image.source"
    assert "'/etc/shadow' is outside [images] allowed_sources" in refusal.reason
    assert "https://img.example.com/" in refusal.reason
    (refusal,) = image_refusals(_spec("http://169.254.169.254/x?token=s3cret"), conf)
    assert "s3cret" not in str(refusal) and "?***" in str(refusal)


def test_default_allows_only_state_path_images(tmp_path):
    conf = load_conf(tmp_path, images={"allowed_sources": "$state_path/images"})
    (tmp_path / "state" / "images").mkdir(parents=True)
    (tmp_path / "state" / "images" / "a.qcow2").write_bytes(b"x")
    assert image_refusals(_spec(f"{tmp_path}/state/images/a.qcow2"), conf) == []
    assert image_refusals(_spec(f"{tmp_path}/a.qcow2"), conf) != []
    assert image_refusals(_spec("https://img.example.com/x"), conf) != []
    # The instances (other guests' disks, the cache) and the database: never.
    conf = load_conf(tmp_path, images={"allowed_sources": str(tmp_path)})
    for path in (f"{tmp_path}/state/instances/_base/abc", f"{tmp_path}/state/spawnflow.sqlite"):
        assert "own state" in image_refusals(_spec(path), conf)[0].reason


def test_redacted_spec_masks_the_url_token():
    spec = _spec("https://img.example.com/x.qcow2?X-Amz-Signature=s3cret#frag")
    assert spec.redacted()["image"]["source"] == "https://img.example.com/x.qcow2?***#***"
    assert spec.image.source.endswith("s3cret#frag")  # the fetch uses the full URL


@pytest.mark.parametrize("driver", ["sqlite", "sqlite+pysqlite"])
def test_the_event_log_is_never_a_source(tmp_path, driver) -> None:
    # The operator allowed the very directory that holds the event log; it may
    # never become an image, however the URL names SQLite.
    db = tmp_path / "spawnflow.sqlite"
    keys = tmp_path / "keys"
    keys.mkdir()
    for path in (db, keys / "v.key", tmp_path / "ok.qcow2"):
        path.write_bytes(b"x")
    conf = load_conf(
        tmp_path,
        images={"allowed_sources": tmp_path},
        database={"connection": f"{driver}:///{db}"},
        encryption={"key_dir": keys},
    )
    allowed = allowed_sources(conf)
    allowed.check(str(tmp_path / "ok.qcow2"))
    for path in (db, tmp_path / "spawnflow.sqlite-wal"):
        path.write_bytes(b"x")
        with pytest.raises(SourceRefused, match="own state"):
            allowed.check(str(path))


@pytest.mark.parametrize("address", ["168.63.129.16", "192.0.0.192", "fd20:ce::254"])
def test_more_cloud_metadata_addresses_are_refused(address: str) -> None:
    # An ordinary name that resolves to a metadata service is refused even
    # though the entry names that host (rebinding looks exactly like this).
    allowed = AllowedSources(["http://images.example/"])
    with pytest.raises(SourceRefused, match="metadata"):
        allowed.check("http://images.example/x.qcow2", resolver=lambda _h, _p: [address])


def test_requoted_query_strings_are_masked_in_fetch_errors() -> None:
    # requests re-quotes the URL before urllib3 words its error: %7E comes
    # back as "~", so the literal query is not in the message.
    error = Exception(
        "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: "
        "/img/x.qcow2?X-Sig=SECRET~abc (Caused by NewConnectionError('refused'))"
    )
    text = _reason(error, "http://127.0.0.1:9/img/x.qcow2?X-Sig=SECRET%7Eabc")
    assert "SECRET" not in text
    assert "/img/x.qcow2?***" in text
