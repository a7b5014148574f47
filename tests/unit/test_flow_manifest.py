"""The flow manifest says what the steps' classes say (names, order, versions)."""

from spawnflow.flows import manifest, spawn, teardown


def test_the_manifest_is_the_flows_steps():
    assert tuple((c.step, c.step_version) for c in spawn.TASKS) == manifest.SPAWN_STEPS
    assert tuple((c.step, c.step_version) for c in teardown.TASKS) == manifest.DELETE_STEPS
    assert manifest.spawn_flow_version() == spawn.flow_version()
    assert manifest.delete_flow_version() == teardown.flow_version()
    assert (manifest.SPAWN, manifest.DELETE) == (spawn.FLOW_NAME, teardown.FLOW_NAME)
