#!/usr/bin/env bash
# Install and start everything the integration tests need on this host:
# Debian packages, libvirtd + virtlogd (QEMU driver, TCG) and PostgreSQL 15.
# Idempotent; what `make test` and CI run. The last line of stdout is the
# PostgreSQL test URL (from start-postgres.sh).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

bash "$here/install-deps.sh"
bash "$here/start-libvirtd.sh"
bash "$here/start-postgres.sh"
