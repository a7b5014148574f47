#!/usr/bin/env bash
# The zero-setup demo: a VM spawned on libvirt's test:///default driver with
# the event log in SQLite, each step shown as it happens, then its history.
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_DIR=/var/tmp/spawnflow-demo
rm -rf "$DEMO_DIR/state"          # the test driver forgets its domains at exit
mkdir -p "$DEMO_DIR/images"
image="$DEMO_DIR/images/demo.qcow2"
[[ -f "$image" ]] || qemu-img create -q -f qcow2 "$image" 64M

status=0
spawnflow --config-file etc/spawnflow/demo.conf spawn examples/demo.yaml || status=$?

echo
echo "Deleted again, by a build of its own in nova's teardown order:"
instance=$(sed -n 's/^ *uuid: *//p' examples/demo.yaml | head -n 1)
spawnflow --config-file etc/spawnflow/demo.conf delete "$instance" --force || status=$?

echo
echo "History, read back from $DEMO_DIR/state/spawnflow.sqlite:"
spawnflow --config-file etc/spawnflow/demo.conf history list
# The demo bridge is the only thing left on the host; a real host keeps its
# bridges (they are shared), the demo tidies it up.
ip link del sfdemo0 2>/dev/null || true
exit $status
