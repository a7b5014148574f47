#!/usr/bin/env bash
# Start a real libvirtd (monolithic, with the QEMU, nwfilter and secret drivers)
# and virtlogd on this machine, without systemd, idempotently.
#
# If qemu:///system already answers, nothing is done. Otherwise:
#   * the libvirt-qemu user and kvm group that Debian's QEMU driver looks up at
#     start are created (libvirt-daemon-system would do it; we don't install it
#     because it drags in systemd/polkit units that are useless here);
#   * /etc/libvirt/qemu.conf is made to run QEMU as root, with no security
#     driver, no cgroups and no per-VM mount namespace (a sandbox has neither
#     AppArmor nor delegated cgroups); only the lines we own are changed, never
#     duplicated. A daemon that already answers is left alone, so a config
#     change reaches it only after it is restarted;
#   * virtlogd and libvirtd are started as daemons, logging to files;
#   * we wait (bounded) for `virsh -c qemu:///system version` to answer, and
#     check that the default nwfilters (clean-traffic, ...) are defined.
# On failure the libvirtd log is printed and the exit status is non-zero.
set -euo pipefail

URI=qemu:///system
WAIT_SECONDS=${SPAWNFLOW_LIBVIRTD_WAIT:-30}
LOG_DIR=/var/log/libvirt
LIBVIRTD_LOG=$LOG_DIR/libvirtd.log
VIRTLOGD_LOG=$LOG_DIR/virtlogd.log
QEMU_CONF=/etc/libvirt/qemu.conf
NWFILTER_DIR=/etc/libvirt/nwfilter
REQUIRED_NWFILTERS=(clean-traffic no-ip-spoofing no-mac-spoofing no-arp-spoofing)

answers() {
    timeout 10 virsh -c "$URI" version >/dev/null 2>&1
}

die() {
    echo "start-libvirtd: $*" >&2
    if [[ -f "$LIBVIRTD_LOG" ]]; then
        echo "---- last lines of $LIBVIRTD_LOG ----" >&2
        tail -n 80 "$LIBVIRTD_LOG" >&2
    fi
    exit 1
}

# Is the daemon named $2 whose pid file is $1 alive? A stale pid file (daemon
# killed, pid reused by another program) or a zombie not yet reaped is "no".
pid_alive() {
    local pidfile=$1 name=$2 pid state
    [[ -s "$pidfile" ]] || return 1
    pid=$(<"$pidfile")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]] || return 1
    # /proc/PID/stat: "pid (comm) STATE ..."
    state=$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

starts=0
start_libvirtd() {
    starts=$((starts + 1))
    echo "---- libvirtd started $(date -Is) ----" >>"$LIBVIRTD_LOG"
    # A failure here (e.g. another libvirtd holds the pid file lock because it
    # was started concurrently) is judged by the wait loop below, not here.
    LIBVIRT_LOG_OUTPUTS="3:file:$LIBVIRTD_LOG" libvirtd -d ||
        echo "start-libvirtd: warning: 'libvirtd -d' exited non-zero" >&2
}

# Set `key = value` in a libvirt config file: rewrite an active (uncommented)
# assignment of key in place, else append one. Never duplicates.
set_conf() {
    local file=$1 key=$2 value=$3
    touch "$file"
    if grep -Eq "^[[:space:]]*${key}[[:space:]]*=" "$file"; then
        # an active assignment exists: rewrite it (and any duplicates) in place
        sed -i -E "s|^[[:space:]]*${key}[[:space:]]*=.*$|${key} = ${value}|" "$file"
    else
        printf '%s = %s\n' "$key" "$value" >>"$file"
    fi
}

nwfilters_defined() {
    local list f
    list=$(timeout 10 virsh -c "$URI" nwfilter-list 2>/dev/null) || return 1
    for f in "${REQUIRED_NWFILTERS[@]}"; do
        grep -Eq "[[:space:]]${f}([[:space:]]|$)" <<<"$list" || return 1
    done
}

# Define the filters shipped by libvirt-daemon-config-nwfilter (via virsh, so a
# running daemon picks them up) if some are missing.
ensure_nwfilters() {
    nwfilters_defined && return 0
    local src xml
    for src in "$NWFILTER_DIR" /usr/share/libvirt/nwfilter; do
        [[ -d "$src" ]] || continue
        for xml in "$src"/*.xml; do
            [[ -e "$xml" ]] || continue
            timeout 20 virsh -c "$URI" nwfilter-define "$xml" >/dev/null 2>&1 || true
        done
        nwfilters_defined && return 0
    done
    nwfilters_defined || die "default nwfilters (${REQUIRED_NWFILTERS[*]}) are not defined; " \
        "is libvirt-daemon-config-nwfilter installed? 'virsh nwfilter-list' says:
$(virsh -c "$URI" nwfilter-list 2>&1 || true)"
}

if [[ $(id -u) -ne 0 ]]; then
    echo "start-libvirtd: must run as root" >&2
    exit 1
fi

if answers; then
    ensure_nwfilters
    exit 0
fi

for bin in libvirtd virtlogd virsh qemu-system-x86_64; do
    command -v "$bin" >/dev/null || die "$bin not found; run tools/install-deps.sh first"
done

# Users and groups the Debian QEMU driver resolves at start (it is built with
# user libvirt-qemu, group kvm and fails to load without them).
getent group kvm >/dev/null || groupadd --system kvm
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
getent group libvirt >/dev/null || groupadd --system libvirt
if ! getent passwd libvirt-qemu >/dev/null; then
    useradd --system --gid kvm --groups libvirt-qemu --no-create-home \
        --home-dir /var/lib/libvirt --shell /usr/sbin/nologin \
        --comment "Libvirt Qemu" libvirt-qemu
fi

mkdir -p /etc/libvirt "$LOG_DIR" "$LOG_DIR/qemu" /var/lib/libvirt/qemu /var/lib/libvirt/images \
    /run/libvirt
set_conf "$QEMU_CONF" user '"root"'
set_conf "$QEMU_CONF" group '"root"'
set_conf "$QEMU_CONF" security_driver '"none"'
set_conf "$QEMU_CONF" cgroup_controllers '[ ]'
# No private /dev mount namespace per QEMU: it needs "/" to be a mount point
# whose propagation can be changed, which fails in chroots and some sandboxes
# ("Failed disable mount propagation out of the root filesystem").
set_conf "$QEMU_CONF" namespaces '[ ]'

# The nwfilter XML files are installed by libvirt-daemon-config-nwfilter's
# postinst (0600 copies of /usr/share/libvirt/nwfilter); restore any missing.
mkdir -p "$NWFILTER_DIR"
for xml in /usr/share/libvirt/nwfilter/*.xml; do
    [[ -e "$xml" ]] || continue
    dest="$NWFILTER_DIR/$(basename "$xml")"
    [[ -e "$dest" ]] || install -m 0600 "$xml" "$dest"
done

if ! pid_alive /run/virtlogd.pid virtlogd; then
    LIBVIRT_LOG_OUTPUTS="3:file:$VIRTLOGD_LOG" virtlogd -d ||
        die "virtlogd failed to start (see $VIRTLOGD_LOG)"
fi

pid_alive /run/libvirtd.pid libvirtd || start_libvirtd

deadline=$((SECONDS + WAIT_SECONDS))
until answers; do
    if ((SECONDS >= deadline)); then
        die "$URI did not answer within ${WAIT_SECONDS} s"
    fi
    if pid_alive /run/libvirtd.pid libvirtd; then
        dead_since=
    elif [[ -z "${dead_since:-}" ]]; then
        dead_since=$SECONDS
    elif ((SECONDS - dead_since >= 3)); then
        # No live libvirtd for 3 s: it died at start, or an old one was still
        # dying when we looked. (Re)start it, at most twice in all.
        ((starts < 2)) || die "libvirtd exited"
        start_libvirtd
        dead_since=
    fi
    sleep 0.5
done

ensure_nwfilters
echo "start-libvirtd: libvirtd answers on $URI"
