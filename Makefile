# spawnflow: the two commands a new machine needs are `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR := /var/tmp/spawnflow-demo

.PHONY: setup demo test lint genconfig bench clean

# Debian packages to build libvirt-python, then a virtualenv with the package.
$(VENV)/.installed: setup.cfg pyproject.toml
	tools/install-deps.sh $(DEPS_PROFILE)
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,postgresql]'
	touch $@

setup: $(VENV)/.installed

demo: DEPS_PROFILE = demo
demo: $(VENV)/.installed
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH tools/demo.sh

test: $(VENV)/.installed
	tools/host-setup.sh
	$(VENV)/bin/ruff check spawnflow tests bench
	$(PY) -m pytest -q -p no:cacheprovider tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check spawnflow tests bench

genconfig: $(VENV)/.installed
	$(VENV)/bin/oslo-config-generator --config-file etc/spawnflow/spawnflow-config-generator.conf

bench: $(VENV)/.installed
	$(PY) -m bench

clean:
	rm -rf $(VENV) $(DEMO_DIR) *.egg-info
