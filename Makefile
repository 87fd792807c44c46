# claimguard: `make demo` runs a local Envoy with the filter; `make test` runs every test.
# Everything a fresh machine needs (the wasm32-wasip1 target, a pinned Envoy in .venv) is
# installed here, idempotently; re-running is quick once it is present.

SHELL        := /bin/bash
CARGO        ?= cargo
PYTHON       ?= python3
VENV         := $(CURDIR)/.venv
WASM_TARGET  := wasm32-wasip1
WASM         := $(CURDIR)/target/$(WASM_TARGET)/release/claimguard.wasm
# Test-only build that can be made to trap (feature fault-injection), in its own target dir.
FAULTS_WASM  := $(CURDIR)/target/faults/$(WASM_TARGET)/release/claimguard.wasm
DEFAULT_ENVOY := $(VENV)/bin/envoy
# Override with an istio-proxy or other Envoy build: make test ENVOY=/path/to/envoy
ENVOY        ?= $(DEFAULT_ENVOY)
DEMO_PORT    ?= 10000

export ENVOY
export CLAIMGUARD_WASM := $(WASM)
export CLAIMGUARD_FAULTS_WASM := $(FAULTS_WASM)

.PHONY: all build build-faults wasm-target envoy test unit lint fmt demo clean

all: build

wasm-target:
	@rustup target list --installed 2>/dev/null | grep -qx '$(WASM_TARGET)' || rustup target add $(WASM_TARGET)

build: wasm-target
	$(CARGO) build --release --target $(WASM_TARGET) --lib
	@echo "claimguard.wasm: $$(stat -c %s '$(WASM)') bytes"

build-faults: wasm-target
	$(CARGO) build --release --target $(WASM_TARGET) --lib --features fault-injection --target-dir target/faults

$(DEFAULT_ENVOY): tests/requirements.txt
	@test -x '$(VENV)/bin/pip' || $(PYTHON) -m venv '$(VENV)'
	'$(VENV)/bin/pip' install --quiet --disable-pip-version-check -r tests/requirements.txt
	@touch '$@'

ifeq ($(ENVOY),$(DEFAULT_ENVOY))
envoy: $(DEFAULT_ENVOY)
else
envoy:
	@command -v '$(ENVOY)' >/dev/null || { echo "ENVOY=$(ENVOY) is not an executable"; exit 1; }
endif
	@'$(ENVOY)' --version | grep -o 'version: .*' || true

# Unit tests (native), then the real-Envoy integration tests under tests/.
test: build build-faults envoy lint
	$(CARGO) test --all-targets

unit:
	$(CARGO) test --lib

lint: wasm-target
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --target $(WASM_TARGET) --lib -- -D warnings

fmt:
	$(CARGO) fmt --all

demo: build envoy
	$(CARGO) run --quiet --release --bin claimguard -- demo --config examples/config.json --port $(DEMO_PORT)

clean:
	$(CARGO) clean
	rm -rf .demo
