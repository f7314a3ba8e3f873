# The two commands a newcomer needs: `make run` and `make test`. Everything they need is installed
# on first use (the torch wheel into a cache outside the checkout, web assets from npm, Chromium for
# the browser test).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO := scripts/with-torch.sh cargo
ARGS ?=

.PHONY: run test build lint fmt bench setup web

## Start the application on its embedded defaults (http://127.0.0.1:8080, ./data).
run: build
	scripts/setup-dicom.sh || echo "dcm2niix could not be installed: DICOM import answers 503 until it is (README: DICOM import)" >&2
	target/release/cggm serve $(ARGS)

## Run the whole test suite (unit, API, end-to-end, browser).
test: web
	scripts/setup-browser.sh
	scripts/setup-dicom.sh
	scripts/setup-dicom3tools.sh
	scripts/setup-slurm.sh
	scripts/setup-pacs.sh
	scripts/setup-tracking.sh >/dev/null
	CGGM_REQUIRE_SLURM=1 CGGM_REQUIRE_PACS=1 CGGM_REQUIRE_TRACKING=1 \
	  CGGM_TRACKING_PYTHON="$$(scripts/setup-tracking.sh)/bin/python" \
	  $(CARGO) test --workspace --all-targets $(ARGS)

## Build target/release/cggm and target/release/cggm-trainer (the libtorch half, rpath to libtorch:
## runs without LD_LIBRARY_PATH).
build: web
	$(CARGO) build --release -p cggm-cli -p cggm-trainer --bins

setup:
	scripts/setup-python.sh >/dev/null
	scripts/setup-dicom.sh

web:
	scripts/setup-web.sh

lint:
	cargo fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

## Benchmarks (numbers for the README): with no ARGS, every preset's training step against PyTorch
## (scripts/bench_table.py); else `cggm bench ARGS` (loader DIR, train, infer, parity).
bench: build
	if [ -z "$(ARGS)" ]; then scripts/with-torch.sh python3 scripts/bench_table.py --binary target/release/cggm; \
	else target/release/cggm bench $(ARGS); fi
