# medallion — the two commands a newcomer needs:
#   make demo   private Postgres + local lake: Odoo-shaped data → bronze, status printed
#   make test   the whole test suite (what CI runs)
SHELL := /bin/bash
.DEFAULT_GOAL := help
PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
DEMO_DIR  ?= .medallion/demo
DEMO_SCALE ?= 1
PGRX_TEST_DIR ?= /tmp/medallion-pgrx-test

.PHONY: help setup setup-tests demo test test-ext test-sql test-e2e fuzz lint fmt clean-demo images test-licenses

help:
	@echo "make demo   run the main job on a private Postgres and a local-directory lake"
	@echo "make test   run the whole test suite (installs what is missing first)"
	@echo "make lint   cargo fmt --check and cargo clippy -D warnings per crate"
	@echo "make fuzz   longer property and definition fuzz runs (FUZZ_CASES=20000)"

setup:
	@scripts/setup.sh

setup-tests:
	@scripts/setup.sh --tests

demo: setup
	@scripts/demo.sh "$(DEMO_DIR)" "$(DEMO_SCALE)"

# The container images (docker/): local Debian bases where none can be
# pulled, then medallion-postgres and medallion from this checkout's builds
# (docs/deploy.md). Needs podman (scripts/setup.sh --tests installs it).
images:
	@scripts/images.sh

clean-demo:
	@scripts/pg-cluster.sh stop "$(DEMO_DIR)/pg" 2>/dev/null || true
	rm -rf "$(DEMO_DIR)"

# pgrx tests (#[pg_test], in a pgrx-managed cluster run as the postgres OS user;
# they install a test build), then the release build is installed again and the
# SQL golden tests, unit tests and the end-to-end suite run against private clusters.
test: setup-tests test-licenses test-ext
	@scripts/setup.sh
	@$(MAKE) --no-print-directory test-sql test-e2e

# Every crate either binary links is under a licence deny.toml allows
# (docs/licenses.md).
test-licenses:
	cargo deny --log-level error check licenses

test-sql:
	scripts/regress.sh

test-ext:
	@mkdir -p "$(PGRX_TEST_DIR)" && chown postgres "$(PGRX_TEST_DIR)" 2>/dev/null || true
	cd pg_ext && cargo pgrx test pg15 --runas postgres --pgdata "$(PGRX_TEST_DIR)/data"

test-e2e:
	cargo test -p medallion -p medallion-tests -- --test-threads=2

# Longer property/fuzz runs than `make test` (which runs 256 cases per
# property and 2,000 definition texts): the conversions, pgoutput handling and
# spill file (cdc/tests/properties), then the definition validators in a real
# Postgres with a fresh seed. Failures are saved in cdc/tests/properties/regressions.
FUZZ_CASES ?= 20000
fuzz: setup-tests
	PROPTEST_CASES=$(FUZZ_CASES) cargo test -p medallion --test properties
	MEDALLION_FUZZ_CASES=$(FUZZ_CASES) MEDALLION_FUZZ_SEED=$$(date +%s) \
	  cargo test -p medallion-tests --test e2e -- definition_fuzz --nocapture

lint:
	cargo fmt --all -- --check
	cargo clippy -p medallion -p medallion-tests --all-targets -- -D warnings
	cd pg_ext && cargo clippy --features "pg15 pg_test" --all-targets -- -D warnings

fmt:
	cargo fmt --all
