# kpi_pipelines: `make demo`, `make test`, `make dev` work on a fresh clone with only Python.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: install demo test test-fast dev serve bench deploy-local clean

# pip's own output (and what the machine's pip configuration prints) goes to a log; its last
# lines are shown when the install fails
$(STAMP): setup.py
	@echo "installing kpi_pipelines and its dependencies into $(VENV) (log: $(VENV)/install.log)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@( $(BIN)/python -m pip install --upgrade pip && $(BIN)/python -m pip install -e ".[dev]" ) > $(VENV)/install.log 2>&1 \
		|| { tail -n 30 $(VENV)/install.log; echo "install failed: see $(VENV)/install.log"; exit 1; }
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@$(BIN)/kpi demo

test: $(STAMP)
	$(BIN)/python -m pytest kpi_pipelines_tests

# the inner loop: every test but the slow, browser and deployment tiers (README "Tests")
test-fast: $(STAMP)
	$(BIN)/python -m pytest kpi_pipelines_tests -m "not slow and not browser and not deployment"

dev: $(STAMP)
	$(BIN)/python -c "from kpi_pipelines.cli import dagster_home; dagster_home()"
	$(BIN)/dagster dev -w workspace.yaml

# the collector, the KPI API and the dashboards on http://127.0.0.1:8000 (docs/api.md)
serve: $(STAMP)
	$(BIN)/kpi serve

# the deployed shape on one machine: code server, webserver and daemon on PostgreSQL (docs/deployment.md)
deploy-local: $(STAMP)
	KPI_BIN=$(CURDIR)/$(BIN) deploy/local.sh

bench: $(STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/api.py
	$(BIN)/python -m kpi_pipelines.alerts.bench

clean:
	rm -rf $(VENV) data .dagster_home *.egg-info dbt_project/target dbt_project/logs
