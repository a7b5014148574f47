# spawnflow: the two commands a new machine needs are `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR := /var/tmp/spawnflow-demo

.PHONY: setup demo test lint docs genconfig bench clean

# Debian packages to build libvirt-python, then a virtualenv with the package.
$(VENV)/.installed: setup.cfg pyproject.toml
	tools/install-deps.sh $(DEPS_PROFILE)
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,postgresql,docs]'
	touch $@

setup: $(VENV)/.installed

demo: DEPS_PROFILE = demo
demo: $(VENV)/.installed
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH tools/demo.sh

test: $(VENV)/.installed
	tools/host-setup.sh
	$(MAKE) lint
	$(MAKE) docs
	$(PY) -m pytest -q -p no:cacheprovider tests

# Format, lint (ruff with bandit's rules), types (mypy --strict on the package).
lint: $(VENV)/.installed
	$(VENV)/bin/ruff format --check spawnflow tests bench
	$(VENV)/bin/ruff check spawnflow tests bench
	$(VENV)/bin/mypy

# The documentation (doc/source), warnings as errors: the lifecycle table, the
# configuration and the CLI reference are generated from the code at build time.
docs: $(VENV)/.installed
	$(VENV)/bin/sphinx-build -W --keep-going -b html doc/source doc/build/html

genconfig: $(VENV)/.installed
	$(VENV)/bin/oslo-config-generator --config-file etc/spawnflow/spawnflow-config-generator.conf

bench: $(VENV)/.installed
	# PostgreSQL first: the persistence and fleet benches use it (pg_stat_statements loaded).
	tools/host-setup.sh
	$(PY) -m bench
	# The fault suite's full sweep (every call of every step, ~7 min), the
	# delete crash matrix's 16 points (~2.5 min) and the 4,000-build fleet run;
	# make test runs their reduced forms.
	SPAWNFLOW_FAULTS_FULL=1 $(PY) -m pytest -q -p no:cacheprovider tests/integration/faults \
		tests/crash/test_delete_matrix.py tests/integration/test_fleet.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) *.egg-info doc/build
