#!/usr/bin/env bash
# Install the Debian 12 packages spawnflow's host parts and tests need.
#
# Idempotent and fast when everything is already there: if `dpkg -s` says every
# package is installed, apt is not touched at all. Otherwise `apt-get update` is
# run (only then) and the missing packages are installed without recommends.
# apt's output goes to a log file, which is printed only on failure.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

# Usage: install-deps.sh [demo]   (demo: only what `make demo` needs)
DEMO_PACKAGES=(libvirt-dev pkg-config gcc libc6-dev python3-dev qemu-utils iproute2)

PACKAGES=(
    # building libvirt-python (pip) against the system libvirt
    libvirt-dev pkg-config gcc libc6-dev python3-dev
    # qemu-img
    qemu-utils
    # the monolithic libvirtd (with the nwfilter, secret, network ... drivers),
    # the QEMU driver, the default nwfilter XML files, and virsh/virt-xml-validate
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-config-nwfilter
    libvirt-clients
    # QEMU for x86 guests (TCG works without KVM); pulls seabios and ipxe-qemu
    qemu-system-x86
    # xmllint, used by virt-xml-validate
    libxml2-utils
    # firewall tools the nwfilter driver drives; ip for bridges
    iptables ebtables iproute2
    # PostgreSQL 15 server and client
    postgresql
    # openssl: the image-fetch tests make a self-signed certificate for HTTPS
    openssl
    # mkfs.ext4 and mount -o loop: the full-disk test's small filesystem
    e2fsprogs mount
    # systemd-analyze: the test that verifies etc/systemd/spawnflow-agent.service
    # (it runs offline: systemd need not be PID 1)
    systemd
)

if [[ "${1:-}" == "demo" ]]; then
    PACKAGES=("${DEMO_PACKAGES[@]}")
fi

LOG_DIR=${SPAWNFLOW_LOG_DIR:-/tmp/spawnflow-host}
mkdir -p "$LOG_DIR"
LOG="$LOG_DIR/install-deps.log"

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: must run as root to install: ${missing[*]}" >&2
    exit 1
fi

echo "install-deps: installing ${missing[*]} (log: $LOG)"
start=$SECONDS
: >"$LOG"

# A failing third-party source must not stop us from installing Debian's
# packages, so the update's exit status is only reported; the install decides.
if ! apt-get update >>"$LOG" 2>&1; then
    echo "install-deps: warning: apt-get update reported errors (see $LOG)" >&2
fi

if ! apt-get install -y --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" >>"$LOG" 2>&1; then
    echo "install-deps: apt-get install failed; log follows" >&2
    cat "$LOG" >&2
    exit 1
fi

echo "install-deps: done in $((SECONDS - start)) s"
