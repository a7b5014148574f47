"""The one plugin loader (spawnflow.virt.plugins) behind volumes, VIFs and the firewall."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from spawnflow.exceptions import FirewallError, VifError
from spawnflow.virt import plugins
from spawnflow.virt.firewall import FirewallDriver
from spawnflow.virt.firewall.noop import NoopFirewall
from spawnflow.virt.firewall.nwfilter import NWFilterFirewall, filter_name


def test_firewall_drivers_load_by_name_with_the_host():
    # Needs the spawnflow.firewall_drivers entry points (setup.cfg) to be installed.
    host = SimpleNamespace(uri="test:///default")
    nwfilter = FirewallDriver.load("nwfilter", host=host)
    assert isinstance(nwfilter, NWFilterFirewall) and nwfilter.host is host
    assert isinstance(FirewallDriver.load("noop", host=host), NoopFirewall)


def test_unknown_firewall_driver_names_it_and_the_group():
    with pytest.raises(FirewallError, match=r"unknown firewall driver 'iptables': no spawnflow\."):
        FirewallDriver.load("iptables", host=None)


def test_noop_firewall_names_no_filter_and_defines_nothing():
    noop = NoopFirewall()
    assert noop.filter_for("u", "fa:16:3e:00:00:01", "b") is None
    assert noop.setup("u", ["fa:16:3e:00:00:01"], "b") == []
    assert not noop.exists("anything")


def test_nwfilter_names_carry_instance_mac_and_build():
    name = NWFilterFirewall(None).filter_for("inst", "fa:16:3e:00:00:01", "build")
    assert name == filter_name("inst", "fa:16:3e:00:00:01", "build")
    assert name == "spawnflow-inst-fa163e000001-build"


def test_a_plugin_that_fails_to_load_reports_its_real_cause(monkeypatch):
    # stevedore calls back with the entry point and the error; without the
    # callback it would log, skip the plugin and the caller would see "unknown".
    def fake_manager(*, name, on_load_failure_callback, **_):
        on_load_failure_callback(None, SimpleNamespace(name=name), ImportError("no pyroute2"))

    monkeypatch.setattr(plugins, "DriverManager", fake_manager)
    with pytest.raises(VifError, match="vif driver plugin 'bridge' failed to load: no pyroute2"):
        plugins.load(
            "spawnflow.vif_drivers", "bridge", error=VifError, plugin="vif driver", selector="x"
        )


def test_kwargs_reach_the_plugin_only_as_given(monkeypatch):
    seen = {}

    def fake_manager(**kwargs):
        seen.update(kwargs)
        return SimpleNamespace(driver="driver")

    monkeypatch.setattr(plugins, "DriverManager", fake_manager)
    assert FirewallDriver.load("noop") == "driver"
    assert seen["invoke_kwds"] == {} and seen["namespace"] == "spawnflow.firewall_drivers"
