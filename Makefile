# claimguard: `make demo` runs a local Envoy with the filter; `make test` runs every test.
# Everything a fresh machine needs (the wasm32-wasip1 target, a pinned Envoy in .venv) is
# installed here, idempotently; re-running is quick once it is present.

SHELL        := /bin/bash
CARGO        ?= cargo
PYTHON       ?= python3
VENV         := $(CURDIR)/.venv
WASM_TARGET  := wasm32-wasip1
# What cargo builds, and the filter we ship: the same module after binaryen's wasm-opt -O3
# (about 11% smaller; V8 compiles it either way).
RAW_WASM     := $(CURDIR)/target/$(WASM_TARGET)/release/claimguard.wasm
WASM         := $(CURDIR)/target/claimguard.wasm
# binaryen (wasm-opt, wasm-metadce, wasm-dis, wasm-as) from npm, pinned by
# tools/binaryen/package-lock.json: Debian's 108 predates relaxed SIMD's final opcodes.
BINARYEN     := $(CURDIR)/tools/binaryen
BINARYEN_BIN := $(BINARYEN)/node_modules/binaryen/bin
# SIMD with relaxed fused multiply-add (.cargo/config.toml, src/crypto/rsa_fma.rs).
WASM_FEATURES := --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
                 --enable-nontrapping-float-to-int --enable-simd --enable-relaxed-simd
# The proxy-wasm callbacks the filter implements (src/host/exports.json). Envoy enters the VM
# for each one exported (response headers and body, stream log, ...) and skips those that are
# not, so wasm-metadce drops the rest. The SDK's dispatcher exports every `proxy_on_*` name;
# claimguard dispatches itself (src/host/roots.rs), links its callbacks as `claimguard_on_*`, and
# they are renamed `proxy_on_*` here (binaryen's text form, wasm-dis | sed | wasm-as): so
# the module cargo builds is not a working filter until `make build` has done this.
# tests/module_exports.rs keeps the list and src/host/glue.rs in step.
WASM_EXPORTS := $(CURDIR)/src/host/exports.json
# Test-only build that can be made to trap (feature fault-injection), with its own cargo
# profile (`faults` in Cargo.toml: no LTO, parallel codegen; it never ships, only has to trap).
RAW_FAULTS_WASM := $(CURDIR)/target/$(WASM_TARGET)/faults/claimguard.wasm
FAULTS_WASM  := $(CURDIR)/target/faults/claimguard.wasm
DEFAULT_ENVOY := $(VENV)/bin/envoy
# Override with an istio-proxy or other Envoy build: make test ENVOY=/path/to/envoy
ENVOY        ?= $(DEFAULT_ENVOY)
DEMO_PORT    ?= 10000
SUDO         := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

export ENVOY
export CLAIMGUARD_WASM := $(WASM)
export CLAIMGUARD_FAULTS_WASM := $(FAULTS_WASM)

.PHONY: all build build-faults wasm-target envoy test unit lint fmt demo demo-edge demo-chain clean fuzz fuzz-smoke fuzz-tools cli
.PHONY: oci push push-layout oci-tools istio-schema istio-check
.PHONY: bench bench-tools empty-filter vm-profile host-profile wasm-opt-tool floor-modules

all: build

wasm-target:
	@rustup target list --installed 2>/dev/null | grep -qx '$(WASM_TARGET)' || rustup target add $(WASM_TARGET)

# $(call finish,CARGO_OUTPUT,MODULE[,OPT_LEVEL]): optimise (-O3 unless given), keep only the
# callbacks, rename them.
define finish
	'$(BINARYEN_BIN)/wasm-opt' $(or $(3),-O3) $(WASM_FEATURES) '$(1)' -o '$(2).opt'
	'$(BINARYEN_BIN)/wasm-metadce' $(WASM_FEATURES) --graph-file '$(WASM_EXPORTS)' '$(2).opt' -o '$(2).tmp' > /dev/null
	'$(BINARYEN_BIN)/wasm-dis' $(WASM_FEATURES) '$(2).tmp' | sed -E 's/^( *\(export )"claimguard_on_/\1"proxy_on_/' > '$(2).wat'
	'$(BINARYEN_BIN)/wasm-as' $(WASM_FEATURES) '$(2).wat' -o '$(2)'
	rm -f '$(2).opt' '$(2).tmp' '$(2).wat'
endef

build: wasm-target wasm-opt-tool
	$(CARGO) build --release --target $(WASM_TARGET) --lib
	$(call finish,$(RAW_WASM),$(WASM))
	@echo "claimguard.wasm: $$(stat -c %s '$(WASM)') bytes (cargo's: $$(stat -c %s '$(RAW_WASM)'))"

# binaryen from npm (a JavaScript build, run by Node), pinned by its lock file; npm ci runs
# again only when the lock file changes.
$(BINARYEN)/node_modules/.package-lock.json: $(BINARYEN)/package-lock.json
	@command -v npm >/dev/null || { echo "make build needs Node.js and npm (apt-get install nodejs npm)" >&2; exit 1; }
	cd $(BINARYEN) && npm ci --no-audit --no-fund --loglevel=error
	@touch '$@'

wasm-opt-tool: $(BINARYEN)/node_modules/.package-lock.json

build-faults: wasm-target wasm-opt-tool
	$(CARGO) build --profile faults --target $(WASM_TARGET) --lib --features fault-injection
	@mkdir -p '$(dir $(FAULTS_WASM))'
	$(call finish,$(RAW_FAULTS_WASM),$(FAULTS_WASM),-O1)

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

# Unit tests (native), the real-Envoy integration tests under tests/ and tools/tests/, and the
# fuzz targets' seeds replayed through their checks (tests/fuzz_corpus.rs).
# (bench-tools: tests/bench_smoke.rs drives the benchmark's listeners with wrk for a few seconds.)
# The tools' tests (CLI, examples, Istio manifests) run beside the filter's: most of both is
# waiting on Envoy, and every test picks its own free ports. Their output follows the filter's.
test: build build-faults envoy bench-tools empty-filter floor-modules lint istio-check oci-tools
	$(CARGO) test --workspace --all-targets --no-run
	@$(CARGO) test -p claimguard-tools -p claimguard-testkeys --all-targets > target/tools-tests.log 2>&1 & tools=$$!; \
	  $(CARGO) test -p claimguard --all-targets; filter=$$?; \
	  wait $$tools; tools_rc=$$?; \
	  echo "--- tools/ tests (claimguard-tools, claimguard-testkeys) ---"; cat target/tools-tests.log; \
	  test $$filter -eq 0 -a $$tools_rc -eq 0

# Fuzzing (cargo-fuzz, libFuzzer, nightly): token parsing + verification, JWKS parsing,
# config parsing, policy evaluation, and claimguard's own RSA and P-256 arithmetic against the
# crates (crypto_diff), seeded from fuzz/corpus/. New inputs go to
# target/fuzz-corpus/ so the seeds stay as committed. A crash fails the run and leaves its
# input in fuzz/artifacts/: copy it into fuzz/corpus/<target>/, and tests/fuzz_corpus.rs replays
# it in every `make test` from then on.
FUZZ_TARGETS      := token_verify jwks_parse config_parse policy_eval crypto_diff
FUZZ_SECONDS      ?= 60
CARGO_FUZZ_VERSION := 0.13.1

fuzz-tools:
	@rustup toolchain list | grep -q '^nightly' || { echo "fuzz: no nightly toolchain here (rustup toolchain install nightly); fuzzing was NOT run" >&2; exit 2; }
	@cargo fuzz --version 2>/dev/null | grep -q ' $(CARGO_FUZZ_VERSION)$$' || cargo install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION)

fuzz: fuzz-tools
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p target/fuzz-corpus/$$t; \
	  echo "fuzz $$t for $(FUZZ_SECONDS)s"; \
	  cargo +nightly fuzz run $$t target/fuzz-corpus/$$t fuzz/corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) 2>&1 | grep -E '^Done|ERROR|SUMMARY|panicked' ; \
	  test $${PIPESTATUS[0]} -eq 0 || exit 1; \
	done

# 15 s per target where a nightly toolchain is present (it says so loudly and skips where
# not). Not part of `make test`, which replays every target's seeds through the same checks on
# stable (tests/fuzz_corpus.rs) instead of building the sanitizer toolchain's copy of
# everything: a fresh clone's `make test` stays within minutes.
fuzz-smoke:
	@if rustup toolchain list | grep -q '^nightly'; then \
	  $(MAKE) --no-print-directory fuzz FUZZ_SECONDS=15; \
	else \
	  echo "WARNING: no nightly toolchain: the fuzz smoke run was SKIPPED" >&2; \
	fi

# --- Istio (docs/istio.md) -------------------------------------------------------------
# `make oci` writes a reproducible OCI image layout of the filter to $(OCI_DIR) and pins its
# digest in istio/components/image/image.yaml; `make push REGISTRY=host[:port]/repo` pushes
# it with skopeo (PUSH_TLS_VERIFY=false for a plain-HTTP registry). Re-pushing is a no-op.
OCI_TAG         ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
REGISTRY        ?= registry.example.com/claimguard/claimguard
OCI_DIR         ?= $(CURDIR)/target/oci/claimguard
PUSH_TLS_VERIFY ?= true
ISTIO_SCHEMA    := tests/istio-schema
ISTIO_OVERLAYS  := $(sort $(notdir $(wildcard istio/overlays/*)))
# Istio examples outside the overlays (Cognito, ALB): rendered and checked the same way.
ISTIO_EXAMPLES  := $(sort $(notdir $(wildcard examples/istio/*)))
# The TrafficExtension rendering of each overlay (Istio 1.30+, docs/istio.md).
ISTIO_TRAFFIC_EXTENSIONS := $(sort $(notdir $(wildcard istio/traffic-extension/*)))

oci: build
	$(CARGO) run --quiet -p claimguard-tools --bin claimguard-oci -- --wasm '$(WASM)' --out '$(OCI_DIR)' --tag '$(OCI_TAG)' \
	  --url 'oci://$(REGISTRY):$(OCI_TAG)' --pin istio/components/image/image.yaml

push: oci push-layout

# Pushes the layout already in $(OCI_DIR) (the OCI round-trip test runs this too).
push-layout: oci-tools
	skopeo copy --quiet --dest-tls-verify=$(PUSH_TLS_VERIFY) 'oci:$(OCI_DIR):$(OCI_TAG)' 'docker://$(REGISTRY):$(OCI_TAG)'
	@echo "pushed $(REGISTRY):$(OCI_TAG)"

# skopeo (push/pull) and docker-registry (the local registry of the round-trip test), from
# Debian's packages: installed once, then only checked.
SKOPEO_DEB_VERSION   := 1.9.3+ds1-1+b10
REGISTRY_DEB_VERSION := 2.8.2+ds1-1

oci-tools:
	@{ dpkg-query -W -f='$${Version}' skopeo 2>/dev/null | grep -qxF '$(SKOPEO_DEB_VERSION)' && \
	   dpkg-query -W -f='$${Version}' docker-registry 2>/dev/null | grep -qxF '$(REGISTRY_DEB_VERSION)'; } || { \
	  echo "oci-tools: installing skopeo $(SKOPEO_DEB_VERSION) and docker-registry $(REGISTRY_DEB_VERSION) (apt-get)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    'skopeo=$(SKOPEO_DEB_VERSION)' 'docker-registry=$(REGISTRY_DEB_VERSION)' >/dev/null; }
	@skopeo --version

# Istio's CRD schemas (@kubernetes-models/istio, pinned by package-lock.json), for
# tests/istio-schema/validate.mjs. npm ci runs again only when the lock file changes.
$(ISTIO_SCHEMA)/node_modules/.package-lock.json: $(ISTIO_SCHEMA)/package-lock.json
	cd $(ISTIO_SCHEMA) && npm ci --no-audit --no-fund --loglevel=error
	@touch '$@'

istio-schema: $(ISTIO_SCHEMA)/node_modules/.package-lock.json

# Renders every overlay and example, as WasmPlugins and as TrafficExtensions (the shipped
# istio/traffic-extension/* for the overlays, the same component over each example), validates
# them against Istio's schemas, and checks each pluginConfig with `claimguard check` (the
# filter's own config code). tools/tests/istio_manifests.rs does all this too, and runs the plugin
# configs in Envoy.
istio-check: istio-schema
	@rm -rf target/istio && mkdir -p target/istio
	@for o in $(ISTIO_OVERLAYS); do kubectl kustomize istio/overlays/$$o > target/istio/$$o.yaml || exit 1; done
	@for o in $(ISTIO_EXAMPLES); do kubectl kustomize examples/istio/$$o > target/istio/example-$$o.yaml || exit 1; done
	@for o in $(ISTIO_TRAFFIC_EXTENSIONS); do \
	  kubectl kustomize istio/traffic-extension/$$o > target/istio/traffic-extension-$$o.yaml || exit 1; done
	@for o in $(ISTIO_EXAMPLES); do d=target/istio/wrap/example-$$o; mkdir -p $$d && \
	  printf 'resources:\n  - ../../../../examples/istio/%s\ncomponents:\n  - ../../../../istio/components/traffic-extension\n' \
	    $$o > $$d/kustomization.yaml && \
	  kubectl kustomize $$d > target/istio/traffic-extension-example-$$o.yaml || exit 1; done
	node $(ISTIO_SCHEMA)/validate.mjs --plugin-configs target/istio/plugin-configs \
	  $(addprefix target/istio/,$(addsuffix .yaml,$(ISTIO_OVERLAYS))) \
	  $(addprefix target/istio/example-,$(addsuffix .yaml,$(ISTIO_EXAMPLES))) \
	  $(addprefix target/istio/traffic-extension-,$(addsuffix .yaml,$(ISTIO_TRAFFIC_EXTENSIONS))) \
	  $(addprefix target/istio/traffic-extension-example-,$(addsuffix .yaml,$(ISTIO_EXAMPLES)))
	@for f in target/istio/plugin-configs/*.json; do \
	  printf '%s: ' "$$f"; $(CARGO) run --quiet -p claimguard-tools --bin claimguard -- check "$$f" >/dev/null && echo ok || exit 1; \
	done

# The side-by-side benchmark (not part of `make test`): one Envoy, three listeners (no auth,
# jwt_authn + rbac, claimguard) in front of one upstream, wrk interleaving them round by
# round; the table becomes BENCHMARKS.md's latest run, the one before it moves to its log.
# Run it on a quiet machine.
BENCH_SECONDS     ?= 10
BENCH_ROUNDS      ?= 3
BENCH_CONNECTIONS ?= 16
BENCH_COLD_TOKENS ?= 30000
BENCH_SCENARIOS   ?=
# upstream (default: routes to an upstream Envoy, token caches on) or direct-nocache (routes
# answer 200 themselves, both token caches off: every request verified on both sides).
BENCH_METHOD      ?=
export BENCH_SECONDS BENCH_ROUNDS BENCH_CONNECTIONS BENCH_COLD_TOKENS BENCH_SCENARIOS BENCH_METHOD
# wrk from Debian, pinned (bookworm's).
WRK_DEB_VERSION   := 4.1.0-3+b2

bench-tools:
	@dpkg-query -W -f='$${Version}' wrk 2>/dev/null | grep -qxF '$(WRK_DEB_VERSION)' || { 	  $(SUDO) apt-get update -qq && 	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends 'wrk=$(WRK_DEB_VERSION)'; }

# The benchmark's floor listener: examples/empty_filter reading the request header map once
# (its `headers` feature), the least any proxy-wasm filter that looks at a request pays.
EMPTY_FILTER_WASM := $(CURDIR)/target/empty_filter/$(WASM_TARGET)/release/empty_filter.wasm
export EMPTY_FILTER_WASM

empty-filter: wasm-target
	$(CARGO) build --quiet --release --target $(WASM_TARGET) --manifest-path examples/empty_filter/Cargo.toml \
	  --target-dir target/empty_filter --features headers

# The proxy-wasm floor (examples/floor/*.wat): a filter that does nothing, one that reads
# the header map, one that also removes the token header. Measured in place of the empty
# filter: make bench BENCH_METHOD=direct EMPTY_FILTER_WASM=$(CURDIR)/target/floor/floor.wasm ...
FLOOR_MODULES := floor floor_headers floor_headers_remove
floor-modules: wasm-opt-tool
	mkdir -p target/floor
	for m in $(FLOOR_MODULES); do '$(BINARYEN_BIN)/wasm-as' examples/floor/$$m.wat -o target/floor/$$m.wasm || exit 1; done

bench: build envoy bench-tools empty-filter
	$(CARGO) build --quiet --release -p claimguard-tools --bin claimguard-bench
	target/release/claimguard-bench --out BENCHMARKS.md \
	  --command 'make bench BENCH_SECONDS=$(BENCH_SECONDS) BENCH_ROUNDS=$(BENCH_ROUNDS) BENCH_CONNECTIONS=$(BENCH_CONNECTIONS)$(if $(strip $(BENCH_SCENARIOS)), BENCH_SCENARIOS="$(strip $(BENCH_SCENARIOS))")$(if $(strip $(BENCH_METHOD)), BENCH_METHOD=$(strip $(BENCH_METHOD)))'

# Where a request's time goes inside V8, stage by stage (examples/vm_profile.rs under
# Node's WASI, the engine Envoy embeds). Needs Node.js >= 18 (Debian: apt-get install nodejs).
# Node for the profiles: the module uses relaxed SIMD, which Node's V8 runs by default from
# Node 22 and behind a flag before (Node 20).
NODE_WASM = node --no-warnings $(shell node --experimental-wasm-relaxed-simd -e 0 2>/dev/null && echo --experimental-wasm-relaxed-simd)

vm-profile: wasm-target
	@command -v node >/dev/null || { echo "vm-profile needs Node.js (apt-get install nodejs)" >&2; exit 1; }
	$(CARGO) build --quiet --release --target $(WASM_TARGET) --example vm_profile
	$(CARGO) run --quiet --release -p claimguard-tools --bin claimguard-bench -- --profile-inputs > target/vm-profile-inputs.json
	$(NODE_WASM) examples/vm_profile.mjs target/$(WASM_TARGET)/release/examples/vm_profile.wasm < target/vm-profile-inputs.json

# The shipped module's whole request path in Node's V8 behind a minimal proxy-wasm host
# (examples/host_profile.mjs): µs per request on the VM side and the host calls it makes,
# cached, then verified on every request (`jwtCacheSize: 0`; hs256: all but the public-key op).
host-profile: build
	@command -v node >/dev/null || { echo "host-profile needs Node.js (apt-get install nodejs)" >&2; exit 1; }
	$(CARGO) run --quiet --release -p claimguard-tools --bin claimguard-bench -- --profile-inputs > target/vm-profile-inputs.json
	for alg in rs256 es256; do HOST_PROFILE_ALG=$$alg $(NODE_WASM) examples/host_profile.mjs '$(WASM)' < target/vm-profile-inputs.json || exit 1; done
	for alg in rs256 hs256; do HOST_PROFILE_COLD=1 HOST_PROFILE_ALG=$$alg $(NODE_WASM) examples/host_profile.mjs '$(WASM)' < target/vm-profile-inputs.json || exit 1; done

unit:
	$(CARGO) test --workspace --lib

lint: wasm-target
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --target $(WASM_TARGET) --lib -- -D warnings

fmt:
	$(CARGO) fmt --all

# The command-line companion (check, explain, import-istio, keygen, mint): installs the
# `claimguard` binary with cargo (into ~/.cargo/bin, or CLI_ROOT/bin if given).
CLI_ROOT ?=
cli:
	$(CARGO) install --locked --path tools --bin claimguard $(if $(CLI_ROOT),--root '$(CLI_ROOT)')

demo: build envoy
	$(CARGO) run --quiet --release -p claimguard-tools --bin claimguard -- demo --config examples/config.json --port $(DEMO_PORT)

# Two tiers: an edge Envoy (API Gateway stand-in: native jwt_authn) → claimguard sidecar → app.
DEMO_EDGE_PORT ?= 10001
demo-edge: build envoy
	$(CARGO) run --quiet --release --example demo_edge -- --port $(DEMO_EDGE_PORT)

# Three hops with mTLS between them (docs/istio.md, "Multi-hop"): gateway → orders → reports,
# each running its istio/overlays plugin config (rendered with kubectl kustomize). Sends the
# requests that pass and the replays that are refused, prints them, and exits;
# DEMO_CHAIN_FLAGS=--serve keeps the chain up until Ctrl-C.
DEMO_CHAIN_PORT  ?= 10002
DEMO_CHAIN_FLAGS ?=
demo-chain: build envoy
	@command -v kubectl >/dev/null || { echo "demo-chain renders istio/overlays with kubectl kustomize: install kubectl" >&2; exit 1; }
	$(CARGO) run --quiet --release --example demo_chain -- --port $(DEMO_CHAIN_PORT) $(DEMO_CHAIN_FLAGS)

clean:
	$(CARGO) clean
	rm -rf .demo
