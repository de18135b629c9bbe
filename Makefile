# Raksh: confidential containers for containerd. `make help` lists targets.
SHELL := /bin/bash
OUTPUT_DIR ?= $(CURDIR)/_output
export OUTPUT_DIR
BIN := $(OUTPUT_DIR)/bin
GO ?= go
# Integration tests boot VMs one after another; CI has 2 cores.
INTEGRATION_TIMEOUT ?= 60m
FUZZTIME ?= 5s
# Version stamped into every binary (internal/version), also by hack/build-guest.sh for the agent.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)
GO_LDFLAGS := -X github.com/raksh-project/raksh/internal/version.Version=$(VERSION) -X github.com/raksh-project/raksh/internal/version.Revision=$(REVISION)
export GO_LDFLAGS
# Host binaries: every command but the guest agent (built static by hack/build-guest.sh).
COMMANDS := $(filter-out raksh-agent,$(notdir $(wildcard cmd/*)))
# Test and demo tools (a loopback registry, the test image writer): never shipped by `make build`.
TEST_COMMANDS := $(notdir $(wildcard internal/cmd/*))

.PHONY: help deps build test-tools initrd test test-unit test-integration test-critest test-kube fuzz bench demo test-demo check clean
.PHONY: protos check-protos

help: ## list targets with their one-line description
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

deps: ## install Debian packages; build containerd v2.4.2, static runc; fetch the guest kernel (cached in _output)
	hack/deps.sh all

build: ## build the product binaries into _output/bin and the guest initrd
	@mkdir -p $(BIN)
	$(GO) build -ldflags "$(GO_LDFLAGS)" -o $(BIN)/ $(addprefix ./cmd/,$(COMMANDS))
	hack/build-guest.sh

test-tools: ## build the test/demo tools (raksh-registry, raksh-testimage) into _output/bin
	@mkdir -p $(BIN)
	$(GO) build -ldflags "$(GO_LDFLAGS)" -o $(BIN)/ $(addprefix ./internal/cmd/,$(TEST_COMMANDS))

initrd: ## rebuild the guest agent and initrd
	hack/build-guest.sh

test: check-protos deps build test-unit test-integration test-critest test-kube test-demo fuzz ## everything CI runs: unit, root/VM integration, critest, the Kubernetes e2e and brief fuzzing
	@echo "make test: all passed"

test-unit: ## unit tests (no root, no VM) under the race detector: go test -race ./...
	$(GO) test -race -count=1 ./...

test-integration: ## root tests against real containerd, runc, QEMU and the guest kernel
	@if [ "$$(id -u)" != 0 ]; then echo "test-integration needs root" >&2; exit 1; fi
	RAKSH_KERNEL=$(OUTPUT_DIR)/deps/kernel/vmlinuz RAKSH_INITRD=$(OUTPUT_DIR)/initrd.img \
		$(GO) test -count=1 -p 1 -tags integration -timeout $(INTEGRATION_TIMEOUT) \
		$$(hack/integration-packages.sh)

protos: ## regenerate the agent API's Go code (api/agent/v1) with pinned tools from the module proxy
	hack/protos.sh

check-protos: ## fail, naming them, if the committed generated code in api/agent/v1 is stale
	hack/protos.sh check

test-critest: ## critest (CRI validation) on runc and raksh side by side; table in _output/critest.txt (RAKSH_CRITEST_ALLOWLISTED=1 runs allow-listed tests too)
	@if [ "$$(id -u)" != 0 ]; then echo "test-critest needs root" >&2; exit 1; fi
	hack/deps.sh critest
	RAKSH_KERNEL=$(OUTPUT_DIR)/deps/kernel/vmlinuz RAKSH_INITRD=$(OUTPUT_DIR)/initrd.img \
		$(GO) test -count=1 -p 1 -tags integration -timeout $(INTEGRATION_TIMEOUT) -v -run '^TestCritest$$' ./integration/critest/

test-kube: ## Kubernetes e2e: a single-node cluster (built once by hack/deps.sh kube, cached in _output/kube) with kubectl scenarios on raksh; table in _output/kube-e2e.txt
	@if [ "$$(id -u)" != 0 ]; then echo "test-kube needs root" >&2; exit 1; fi
	hack/deps.sh kube
	RAKSH_KERNEL=$(OUTPUT_DIR)/deps/kernel/vmlinuz RAKSH_INITRD=$(OUTPUT_DIR)/initrd.img \
		$(GO) test -count=1 -p 1 -tags integration -timeout 45m -v -run '^TestKube$$' ./integration/kube/

fuzz: ## run every fuzz target briefly (FUZZTIME, default 5s)
	hack/fuzz.sh $(FUZZTIME)

bench: deps build ## benchmarks: raksh vs runc, boot time, RSS, component benchmarks (see docs/benchmarks.md)
	hack/bench.sh

demo: deps build ## plain, owner-sealed, encrypted-image, guest-pulled and NRI-sealed containers through a private containerd; rakshctl audit shows what the node holds
	hack/demo.sh

test-demo: ## make demo as a smoke test (root): fails on any step that does not hold
	@if [ "$$(id -u)" != 0 ]; then echo "test-demo needs root" >&2; exit 1; fi
	hack/demo.sh >$(OUTPUT_DIR)/demo.txt 2>&1 || { tail -40 $(OUTPUT_DIR)/demo.txt; exit 1; }
	@echo "test-demo: passed (transcript in $(OUTPUT_DIR)/demo.txt)"

check: ## gofmt, go vet (with integration tag)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags integration ./...

clean: ## remove built binaries (keeps the cached deps)
	rm -rf $(BIN) $(OUTPUT_DIR)/initrd.img
