"""Configuration: defaults, loading, and the committed sample staying in sync."""

import subprocess
import sys
from pathlib import Path

import spawnflow.conf

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_and_database_url(tmp_path):
    conf = spawnflow.conf.load([])
    assert conf.network.vif_plugging_timeout == 300
    assert conf.network.vif_plugging_is_fatal is True
    assert conf.firewall.driver == "nwfilter"
    assert conf.recovery.policy == "auto"
    assert spawnflow.conf.database_url(conf) == "sqlite:////var/lib/spawnflow/spawnflow.sqlite"


def test_load_reads_a_config_file(tmp_path):
    path = tmp_path / "x.conf"
    path.write_text("[DEFAULT]\nstate_path = /srv/sf\n[database]\nconnection = sqlite:///a\n")
    conf = spawnflow.conf.load(["--config-file", str(path)])
    assert conf.state_path == "/srv/sf"
    assert spawnflow.conf.instances_path(conf) == "/srv/sf/instances"
    assert spawnflow.conf.database_url(conf) == "sqlite:///a"


def test_committed_sample_is_up_to_date(tmp_path):
    out = tmp_path / "sample.conf"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "oslo_config.generator",
            # What `make genconfig` reads: the namespaces (spawnflow, oslo.log), the width.
            "--config-file",
            "etc/spawnflow/spawnflow-config-generator.conf",
            "--output-file",
            str(out),
        ],
        check=True,
        cwd=ROOT,
    )
    committed = (ROOT / "etc/spawnflow/spawnflow.conf.sample").read_text()
    assert out.read_text() == committed, "run `make genconfig` and commit the sample"
