# Kiln: bake a production VPS image for a Django monolith, boot it, prove it.
# `make help` lists the targets. Every target installs what it needs itself (Debian/Ubuntu host, run as root).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

DISTRO ?= debian-13
APP    ?= app
VENV   ?= .venv
PY     := $(VENV)/bin/python
export DISTRO
# The smallest VPS Kiln sizes for (MiB): the boot check's instance b boots with it, the infra suites' VM runs with it
# (the deploys under load, restores and jobs there: the memory peaks; tests/infra/test_memory.py).
SMALL_VPS_MB ?= 1024

# Packages the host needs for the app tests and lint (the image build installs its own in packer/scripts/build.sh).
HOST_PACKAGES := mariadb-server redis-server shellcheck default-libmysqlclient-dev pkg-config build-essential \
                 python3-venv python3-dev

# Each stage prints a timestamped start and its duration, so a slow step is visible in CI logs.
stage = @printf '\n==> %s  [%s]\n' '$(1)' "$$(date -u +%T)"; t0=$$(date +%s); { $(2); } || { printf '<== %s FAILED after %ss\n' '$(1)' "$$(( $$(date +%s) - t0 ))"; exit 1; }; printf '<== %s done in %ss\n' '$(1)' "$$(( $$(date +%s) - t0 ))"

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z][a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'
	@echo "  Variables: DISTRO=$(DISTRO) (debian-13 | ubuntu-24.04), APP=$(APP) (the folder with manage.py), VENV=$(VENV), NAME= (make release: the release's name)"

.PHONY: deps
deps: $(VENV)/.installed ## Install host packages and the virtualenv the tests need
	$(call stage,host packages,tools/apt-ensure.sh $(HOST_PACKAGES))

$(VENV)/.installed: app/requirements.txt app/requirements-dev.txt
	$(call stage,virtualenv,tools/apt-ensure.sh $(HOST_PACKAGES) && \
	  python3 -m venv $(VENV) && $(VENV)/bin/pip install -q --upgrade pip && \
	  $(VENV)/bin/pip install -q --require-hashes -r app/requirements-dev.txt)
	@touch $@

.PHONY: lint
lint: deps ## ruff on Python, shellcheck on shell, packer fmt/validate
	$(call stage,ruff,$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .)
	$(call stage,shellcheck,git ls-files -z -- '*.sh' .ci/run 'provision/files/usr/local/*bin/*' 'provision/files/usr/local/lib/kiln/kiln-*' | xargs -0 shellcheck)
	$(call stage,packer fmt+validate,packer/scripts/lint.sh)

.PHONY: test-app
test-app: deps ## App tests against real MariaDB, Redis, S3 (moto) and SMTP servers
	$(call stage,app tests,$(VENV)/bin/pytest tests/app)

.PHONY: test-tools
test-tools: deps ## Kiln's test tooling without a guest: the background audit's hold, bound, stop; QMP; Lynis shim; provision helpers on read-only and full file systems; log coverage; disk check
	$(call stage,tool tests,tools/apt-ensure.sh qemu-system-x86 lynis restic prometheus-node-exporter rsyslog rsyslog-gnutls bind9-dnsutils haproxy && KILN_TOOLS_NO_SKIP=1 $(VENV)/bin/pytest tests/tools)

.PHONY: app-check
app-check: ## Check the app's contract ([tool.kiln] in APP/pyproject.toml) for DISTRO: every problem, in seconds
	$(call stage,app-check $(APP),python3 provision/files/usr/local/lib/kiln/kiln_app.py check $(APP) --distro $(DISTRO))

.PHONY: image
# app-check first: a contract that cannot work stops the build before anything is installed or baked (build.sh checks
# it again, for a build started without make).
image: app-check ## Build the VPS qcow2 + Vagrant box + manifest of APP into build/$(DISTRO)/ (installs packer, qemu, ...)
	$(call stage,image $(DISTRO) $(APP),APP_DIR=$(abspath $(APP)) packer/scripts/build.sh)

.PHONY: release
release: app-check ## A release artifact of APP for DISTRO (the app + its wheelhouse) into build/release/: `kiln deploy FILE` installs it offline
	$(call stage,release $(DISTRO) $(APP),packer/scripts/make-release.sh $(DISTRO) $(APP) build/release $(NAME))

.PHONY: image-check image-hygiene image-boot
image-check: image-hygiene image-boot ## Image hygiene (DigitalOcean rules, stricter), then two boots with QEMU: a Hetzner server (metadata API), a 1 GB NoCloud VPS

image-hygiene: ## The image hygiene part of image-check alone (make test runs it beside the build's tail)
	$(call stage,image hygiene,tests/image/hygiene-check.sh)

image-boot: ## The two boots of image-check alone (make test runs them with nothing beside them)
	$(call stage,boot check,B_MEM=$(SMALL_VPS_MB) tests/image/boot-check.sh)

.PHONY: test-provision
test-provision: ## Fast tier without a VM: provision/ in a systemd-nspawn container (first boot, idempotence)
	$(call stage,provision in nspawn,tests/provision/nspawn-check.sh)

.PHONY: test-cluster
test-cluster: deps ## Roles (issue 14) on a cluster of nspawn containers: data, 2 web, worker, HAProxy and a client on a private network of namespaces
	$(call stage,cluster in nspawn,tools/apt-ensure.sh mmdebstrap systemd-container curl iproute2 util-linux && $(VENV)/bin/pytest tests/cluster)

.PHONY: bench
bench: ## How fast the nspawn tier's server serves, beside DigitalOcean's Django 1-Click config: a table, bench/results/<commit>-nspawn.{json,png} (BENCH_QUICK=1: the short run)
	$(call stage,bench$(if $(filter 1,$(BENCH_QUICK)), (quick)),bench/run.sh)

.PHONY: bench-vm
bench-vm: ## The same bench inside a VM of the newest image (TCG: indicative, ratios only): bench/results/<image commit>-vm.{json,png}
	$(call stage,bench in a VM$(if $(filter 1,$(BENCH_QUICK)), (quick)),BENCH_TIER=vm bench/run.sh)

.PHONY: test-bench
test-bench: ## BENCH_QUICK=1 make bench: the harness must not rot; fails on its validity gates only, never on a figure
	$(call stage,quick bench,BENCH_QUICK=1 bench/run.sh)

.PHONY: test-infra
test-infra: deps ## testinfra suites against a Vagrant VM of SMALL_VPS_MB booted from the baked box
	$(call stage,infra suites,KILN_INFRA_VENV=$(VENV) KILN_DESTROY=1 KILN_MEMORY=$(SMALL_VPS_MB) tests/vagrant/run-infra.sh)

.PHONY: test
# CI runs exactly this (.ci/run). The image builds in the background (tools/background.sh) while the native stages
# run: under TCG its build VM keeps about one of the 2 host cores busy and the virtualenv, lint, the app and tool tests
# and the nspawn tier use the other (the build needs no virtualenv: it starts first, the longer of the two); the image's
# hygiene check (single-threaded) follows it there, beside the cluster test (host CPU ~60 % busy then: CI53). The boot
# check then runs alone: its TCG boot figures are issue 9's. The quick bench runs beside the infra suites' start (the
# box's import and the VM's boot, the first ~100 s of that stage, largely one core): in make test it only proves the
# harness (its gates hold on a shared host: a client-bound cell is reported as such; checked beside an infra VM and
# the nspawn tier at once), its figures are make bench's to give on a quiet host.
# Lynis audits the suites' own VM, in the background from its boot (tests/infra/conftest.py), not the boot check's
# instance b of the production image (KILN_LYNIS_BG=DIR in the environment, still supported): on 2 cores a second
# TCG guest only shares the same CPU, 4 vCPUs on 2 cores (clean clones: 4107 s with b, 3276 s without).
# The nspawn tier (test-provision) is in it for what only it covers: a second app with another contract in every key,
# baked onto an instance and probed, and the fresh instance's first boot -> health 200 natively (a figure there;
# make bench judges it against 3 s). The cluster test (test-cluster) boots five hosts in roles from the same provisioned
# rootfs: a cluster of VMs would not fit CI's time under TCG.
test: ## Everything CI runs: lint, app and tool tests, the nspawn tier (second app) and the cluster test beside the image build and its hygiene check, the boot check, the infra suites beside the quick bench (on the tier's provisioned rootfs)
	@tools/background.sh start image $(MAKE) --no-print-directory image image-hygiene
	@$(MAKE) --no-print-directory deps lint test-app test-tools test-provision test-cluster || { tools/background.sh stop image; exit 1; }
	@tools/background.sh wait image
	@$(MAKE) --no-print-directory image-boot
	@tools/background.sh start bench $(MAKE) --no-print-directory test-bench
	@$(MAKE) --no-print-directory test-infra || { tools/background.sh stop bench; exit 1; }
	@tools/background.sh wait bench
