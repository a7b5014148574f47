#!/usr/bin/env bash
# Start Debian's PostgreSQL 15 cluster "main" and make the test role and
# database, idempotently. Installs nothing (tools/install-deps.sh does).
#
# The last line of stdout is the SQLAlchemy URL of the test database:
#   postgresql+psycopg://spawnflow:spawnflow@127.0.0.1:5432/spawnflow_test
# The role has CREATEDB so tests can make (and drop) throwaway databases.
set -euo pipefail

PG_VERSION=${SPAWNFLOW_PG_VERSION:-15}
PG_CLUSTER=main
PG_PORT=${SPAWNFLOW_PG_PORT:-5432}
PG_ROLE=spawnflow
PG_PASSWORD=spawnflow
PG_DB=spawnflow_test
WAIT_SECONDS=${SPAWNFLOW_PG_WAIT:-30}
PG_LOG=/var/log/postgresql/postgresql-${PG_VERSION}-${PG_CLUSTER}.log

die() {
    echo "start-postgres: $*" >&2
    if [[ -f "$PG_LOG" ]]; then
        echo "---- last lines of $PG_LOG ----" >&2
        tail -n 40 "$PG_LOG" >&2
    fi
    exit 1
}

if [[ $(id -u) -ne 0 ]]; then
    echo "start-postgres: must run as root" >&2
    exit 1
fi

command -v pg_ctlcluster >/dev/null || die "pg_ctlcluster not found; run tools/install-deps.sh first"
[[ -x /usr/lib/postgresql/$PG_VERSION/bin/postgres ]] ||
    die "PostgreSQL $PG_VERSION is not installed; run tools/install-deps.sh first"

as_postgres() {
    # cd: psql complains when the cwd is not readable by postgres
    (cd / && runuser -u postgres -- "$@")
}

psql_admin() {
    as_postgres psql --no-psqlrc -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres "$@"
}

# The package's postinst makes the cluster; make it if it is missing (e.g. it
# was dropped, or the install ran with create_main_cluster = false).
if [[ ! -f /etc/postgresql/$PG_VERSION/$PG_CLUSTER/postgresql.conf ]]; then
    pg_createcluster --port "$PG_PORT" --locale C.UTF-8 "$PG_VERSION" "$PG_CLUSTER" \
        >/dev/null || die "pg_createcluster failed"
fi

# pg_lsclusters columns: Ver Cluster Port Status Owner Datadir Logfile
cluster_field() {
    pg_lsclusters --no-header "$PG_VERSION" "$PG_CLUSTER" 2>/dev/null | awk -v f="$1" '{print $f}'
}

# pg_createcluster (also when run by the package's postinst) takes the next
# free port if 5432 was busy at that moment; put the cluster on the wanted one.
port=$(cluster_field 3)
if [[ "$port" != "$PG_PORT" ]]; then
    pg_conftool "$PG_VERSION" "$PG_CLUSTER" set port "$PG_PORT" ||
        die "cannot set port $PG_PORT for cluster $PG_VERSION/$PG_CLUSTER (it has $port)"
    if [[ "$(cluster_field 4)" == online* ]]; then
        pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" stop >/dev/null 2>&1 ||
            die "pg_ctlcluster $PG_VERSION $PG_CLUSTER stop failed"
    fi
fi

# pg_stat_statements (the server's count of statements and their time, read by
# bench/fleet.py) is loaded at server start: a drop-in in the cluster's
# conf.d, which postgresql.conf includes last. A server running without it
# is restarted once, below.
PRELOAD_CONF=/etc/postgresql/$PG_VERSION/$PG_CLUSTER/conf.d/spawnflow-preload.conf
if [[ ! -f "$PRELOAD_CONF" ]]; then
    echo "shared_preload_libraries = 'pg_stat_statements'" >"$PRELOAD_CONF" ||
        die "cannot write $PRELOAD_CONF"
fi

status=$(cluster_field 4)
if [[ "$status" != online* ]]; then
    # The socket directory lives in /run, which may be fresh after a reboot.
    install -d -o postgres -g postgres -m 2775 /var/run/postgresql
    pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start >/dev/null 2>&1 ||
        die "pg_ctlcluster $PG_VERSION $PG_CLUSTER start failed"
fi

wait_ready() {
    local deadline=$((SECONDS + WAIT_SECONDS))
    until as_postgres pg_isready -q -h 127.0.0.1 -p "$PG_PORT" \
            && psql_admin -c 'SELECT 1' >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "PostgreSQL did not accept connections within ${WAIT_SECONDS} s"
        sleep 0.5
    done
}
wait_ready

if [[ $(psql_admin -tAc 'SHOW shared_preload_libraries') != *pg_stat_statements* ]]; then
    pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" restart >/dev/null 2>&1 ||
        die "pg_ctlcluster $PG_VERSION $PG_CLUSTER restart (to load pg_stat_statements) failed"
    wait_ready
fi

# Role: create it, or bring an existing one to the wanted password/attributes.
psql_admin -v role="$PG_ROLE" -v pw="$PG_PASSWORD" >/dev/null <<'SQL'
SELECT format('CREATE ROLE %I LOGIN CREATEDB PASSWORD %L', :'role', :'pw')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I LOGIN CREATEDB PASSWORD %L', :'role', :'pw') \gexec
SQL

# Database (CREATE DATABASE cannot run in a DO block, hence \gexec).
psql_admin -v role="$PG_ROLE" -v db="$PG_DB" >/dev/null <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SQL

# Prove the password login over TCP works (pg_hba: host ... scram-sha-256).
PGPASSWORD=$PG_PASSWORD psql --no-psqlrc -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_ROLE" \
    -d "$PG_DB" -tAc 'SELECT 1' >/dev/null 2>&1 ||
    die "cannot log in as $PG_ROLE to $PG_DB over 127.0.0.1:$PG_PORT"

echo "postgresql+psycopg://$PG_ROLE:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
