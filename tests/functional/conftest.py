"""Functional tests: the whole agent on libvirt's in-process test:///default driver."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from pyroute2 import IPRoute

from spawnflow import Agent
from tests.faults import injector  # noqa: F401 - a fixture for every test here
from tests.helpers import load_conf, make_qcow2

TEST_DRIVER = {"connection_uri": "test:///default", "virt_type": "test"}


@pytest.fixture
def conf(tmp_path: Path):
    return load_conf(tmp_path, libvirt=TEST_DRIVER, firewall={"driver": "noop"})


@pytest.fixture
def agent(conf) -> Iterator[Agent]:
    with Agent(conf) as running:
        yield running


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return make_qcow2(tmp_path / "image.qcow2")


@pytest.fixture
def test_conn() -> Iterator[libvirt.virConnect]:
    """A second connection to the same in-process test driver state."""
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


@pytest.fixture
def bridge() -> Iterator[str]:
    name = "sft" + secrets.token_hex(3)
    yield name
    with IPRoute() as ipr:
        for link in ipr.link_lookup(ifname=name):
            ipr.link("del", index=link)
