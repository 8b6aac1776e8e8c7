# Cocoon: `make run` sets up this machine and starts cocoond on its embedded
# defaults; `make test` runs everything CI runs.

SHELL       := /bin/bash
GO          ?= go
BIN         := $(CURDIR)/bin
GOTAGS      := containers_image_openpgp,exclude_graphdriver_btrfs,exclude_graphdriver_devicemapper
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo v0.1.0-dev)
REVISION    ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS     := -s -w -X github.com/cocoon-runtime/cocoon/version.Version=$(VERSION) -X github.com/cocoon-runtime/cocoon/version.Revision=$(REVISION)
export CGO_ENABLED := 0
export GOFLAGS     := -buildvcs=false -tags=$(GOTAGS)

CRI_TOOLS_VERSION := v1.36.0
CRI_TOOLS_DIR      = $(shell $(GO) env GOMODCACHE)/sigs.k8s.io/cri-tools@$(CRI_TOOLS_VERSION)
# golangci-lint is built from the module proxy, not from go.mod: its
# dependency tree would swamp ours. The version is in the binary's name so a
# bump rebuilds it.
GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT          := $(BIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
# kubelet for test/k8s, built from the k8s.io/kubernetes pin in
# test/k8s/kubelet/go.mod; the version in its name rebuilds it when the pin moves.
KUBELET_VERSION := $(shell awk '$$1 == "require" && $$2 == "k8s.io/kubernetes" {print $$3}' test/k8s/kubelet/go.mod)
KUBELET         := $(BIN)/kubelet-$(KUBELET_VERSION)

# Where `make run` keeps the daemon's pid and log.
RUN_PID     := /run/cocoon/cocoond.pid
RUN_LOG     := /var/log/cocoon/cocoond.log
SOCKET      := /run/cocoon/cocoon.sock
# make run installs the guest where cocoond looks for it; tests use their own copy.
GUEST_DIR   ?= /var/lib/cocoon/guest
TEST_GUEST  := $(CURDIR)/_output/guest

.PHONY: all build guest deps check-deps tools run registry registry-down stop test test-unit lint fuzz verify-generate test-integration test-k8s kubelet test-critest conformance bench generate fmt vet clean

all: build

## build: cocoond, cocoon-agent (static), the cocoon CLI and the test image tool into bin/
build:
	@mkdir -p $(BIN)
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/cocoond ./cmd/cocoond
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/cocoon ./cmd/cocoon
	$(GO) build -o $(BIN)/cocoon-test-images ./test/images
	@# libcontainer's nsenter and libseccomp are C: the agent is the one cgo binary, linked statically for the initramfs.
	CGO_ENABLED=1 $(GO) build -tags '$(GOTAGS),osusergo,netgo,seccomp' -ldflags '$(LDFLAGS) -extldflags=-static' -o $(BIN)/cocoon-agent ./cmd/cocoon-agent

## guest: kernel + initramfs with the agent as /init, into GUEST_DIR
guest: build
	$(BIN)/cocoon guest build --agent $(BIN)/cocoon-agent --agent-version $(VERSION) --out $(GUEST_DIR)

## deps: Debian packages from hack/packages.txt (idempotent), then its post-conditions
deps:
	@hack/install-deps.sh

## check-deps: every host command and file the build and tests use (hack/needs.txt) comes
## from a package deps installs, and leaving any one package out of the list fails the check
check-deps:
	hack/check-deps.sh
	hack/check-deps.sh --self-test

## tools: crictl, critest and ginkgo (for critest --parallel) from cri-tools $(CRI_TOOLS_VERSION), and critest-summary
tools: $(BIN)/crictl $(BIN)/critest $(BIN)/ginkgo
	$(GO) build -o $(BIN)/critest-summary ./test/critest/summary

$(BIN)/crictl $(BIN)/critest $(BIN)/ginkgo:
	@mkdir -p $(BIN)
	GOFLAGS=-buildvcs=false $(GO) mod download sigs.k8s.io/cri-tools@$(CRI_TOOLS_VERSION)
	cd $(CRI_TOOLS_DIR) && GOFLAGS=-mod=mod $(GO) build -buildvcs=false -o $(BIN)/crictl ./cmd/crictl
	cd $(CRI_TOOLS_DIR) && GOFLAGS=-mod=mod $(GO) test -buildvcs=false -c -o $(BIN)/critest ./cmd/critest
	@# The ginkgo CLI at the version cri-tools' own go.mod pins.
	cd $(CRI_TOOLS_DIR) && GOFLAGS=-mod=mod $(GO) build -buildvcs=false -o $(BIN)/ginkgo github.com/onsi/ginkgo/v2/ginkgo

## run: set up the machine, build, and start cocoond on its embedded defaults
run: deps build tools guest
	@hack/install-cni-default.sh
	@# crictl's 2 s default timeout is shorter than a VM boot under TCG.
	@[ -e /etc/crictl.yaml ] || printf 'runtime-endpoint: unix://$(SOCKET)\nimage-endpoint: unix://$(SOCKET)\ntimeout: 60\n' > /etc/crictl.yaml
	@if [ -S $(SOCKET) ] && $(BIN)/crictl --runtime-endpoint unix://$(SOCKET) version >/dev/null 2>&1; then \
		echo "cocoond already running on $(SOCKET)"; exit 0; fi; \
	mkdir -p $$(dirname $(RUN_LOG)) /run/cocoon; \
	setsid $(BIN)/cocoond >>$(RUN_LOG) 2>&1 < /dev/null & echo $$! > $(RUN_PID); \
	for i in $$(seq 1 100); do [ -S $(SOCKET) ] && break; sleep 0.1; done; \
	$(BIN)/crictl --runtime-endpoint unix://$(SOCKET) version && \
	echo "cocoond running (pid $$(cat $(RUN_PID)), log $(RUN_LOG)); try: crictl --runtime-endpoint unix://$(SOCKET) info"

## registry: the local test registry on 127.0.0.1:5000 with the critest images, and a
## registries.conf drop-in mirroring registry.k8s.io, k8s.gcr.io, gcr.io and public.ecr.aws to it
REGISTRY_DIR    := /var/lib/cocoon/test-registry
REGISTRY_DROPIN := /etc/containers/registries.conf.d/50-cocoon-test-registry.conf
registry: build
	$(BIN)/cocoon-test-images up --dir $(REGISTRY_DIR)
	mkdir -p $$(dirname $(REGISTRY_DROPIN))
	$(BIN)/cocoon-test-images registries-conf > $(REGISTRY_DROPIN)
	@echo "mirror table installed in $(REGISTRY_DROPIN); try: crictl pull registry.k8s.io/e2e-test-images/busybox:1.29-2"

registry-down:
	-$(BIN)/cocoon-test-images down --dir $(REGISTRY_DIR)
	rm -f $(REGISTRY_DROPIN)

## stop: stop the cocoond that `make run` started
stop:
	@if [ -f $(RUN_PID) ]; then kill -TERM $$(cat $(RUN_PID)) 2>/dev/null || true; rm -f $(RUN_PID); fi

## test: everything CI runs (unit, integration as root, critest)
test: deps check-deps build tools test-unit lint fuzz test-integration test-k8s test-critest

# The agent links libcontainer's C nsenter, so tests build with cgo; cocoond itself stays CGO_ENABLED=0.
test-unit: verify-generate
	CGO_ENABLED=1 $(GO) vet ./...
	CGO_ENABLED=1 $(GO) test -count=1 ./...
	@# The pod and container pipelines race each other (a stop against a start): again under the race detector.
	CGO_ENABLED=1 $(GO) test -race -count=1 ./sandbox/... ./cri/...

## lint: golangci-lint with .golangci.yml (the first run builds the linter, a few minutes)
lint: $(GOLANGCI_LINT)
	CGO_ENABLED=1 $(GOLANGCI_LINT) run --build-tags '$(GOTAGS)' ./...

$(GOLANGCI_LINT):
	@mkdir -p $(BIN)
	@# Our GOFLAGS (build tags, -buildvcs) are not the linter's.
	GOFLAGS= GOBIN=$(BIN)/.golangci-lint $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(BIN)/.golangci-lint/golangci-lint $@ && rmdir $(BIN)/.golangci-lint

## fuzz: each fuzz target for FUZZTIME, one at a time (go test runs one -fuzz target per call).
## Crashers land in <pkg>/testdata/fuzz/<Target>/ and then run as seeds in test-unit.
# Budgets are execution counts, not durations: Go 1.26's fuzz coordinator can
# fail a target with a bare "context deadline exceeded" when a -fuzztime
# duration runs out mid-execution (golang/go#75804, fixed in Go 1.27); a count
# has no deadline to race. 20000 runs take 3-25 s per target here.
FUZZTIME         ?= 20000x
# Minimizing each new interesting input may take up to 60 s by default and its
# executions are not counted: on a short FUZZTIME it would take the whole budget.
FUZZMINIMIZETIME ?= 200x
FUZZ_TARGETS := ./cri:FuzzValidate ./sandbox/ocispec:FuzzBuild ./sandbox:FuzzLogWriter ./sandbox:FuzzLyingAgent ./config:FuzzLoad ./agent:FuzzAgentRequests
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$name in $$pkg for $(FUZZTIME)"; \
		CGO_ENABLED=1 $(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) $$pkg; \
	done

## verify-generate: the committed generated code and docs/CONFIG.md are what `make generate` produces
verify-generate:
	$(MAKE) generate
	git diff --exit-code -- api/ docs/CONFIG.md || { echo "generated files are stale: run make generate and commit"; exit 1; }

## test-integration: tests that need root and real components (they skip, saying why, otherwise)
test-integration:
	$(MAKE) guest GUEST_DIR=$(TEST_GUEST)
	set -o pipefail; CGO_ENABLED=1 COCOON_INTEGRATION=1 COCOON_BIN=$(BIN) COCOON_GUEST_DIR=$(TEST_GUEST) $(GO) test -timeout 20m -v -count=1 -p 1 ./vm/... ./test/e2e/... | grep -E "^(=== RUN|\s*--- |PASS|FAIL|ok|e2e:)|SKIP|skip|_test.go:"

## kubelet: kubelet from the pinned k8s.io/kubernetes (about 12 min cold on 2 cores, cached by version)
kubelet: $(KUBELET)

$(KUBELET): test/k8s/kubelet/go.mod
	@mkdir -p $(BIN)
	@# kubelet reports (and its node status carries) the version only from these ldflags.
	cd test/k8s/kubelet && CGO_ENABLED=0 GOFLAGS=-buildvcs=false nice -n 10 $(GO) build -trimpath \
		-ldflags '-s -w -X k8s.io/component-base/version.gitVersion=$(KUBELET_VERSION)' -o $@ k8s.io/kubernetes/cmd/kubelet

## test-k8s: a real kubelet (an API server double in the test as its API server) with cocoond as its only runtime (test/k8s)
test-k8s: $(KUBELET) tools
	$(MAKE) guest GUEST_DIR=$(TEST_GUEST)
	set -o pipefail; CGO_ENABLED=1 COCOON_INTEGRATION=1 COCOON_BIN=$(BIN) COCOON_GUEST_DIR=$(TEST_GUEST) $(GO) test -timeout 15m -v -count=1 ./test/k8s/ | grep -E "^(=== RUN|\s*--- |PASS|FAIL|ok|k8s:)|SKIP|skip|_test.go:"

## test-critest: the full critest validation suite against cocoond, minus test/critest/skip.txt
test-critest:
	$(MAKE) guest GUEST_DIR=$(TEST_GUEST)
	BIN=$(BIN) COCOON_GUEST_DIR=$(TEST_GUEST) test/critest/run.sh

## conformance: test-critest, then the same suite against containerd + runc, counts side by side (JUnit in _output/critest)
conformance: deps build tools
	$(MAKE) guest GUEST_DIR=$(TEST_GUEST)
	BIN=$(BIN) COCOON_GUEST_DIR=$(TEST_GUEST) test/critest/run.sh --baseline

## bench: image pull through cocoond against skopeo, guest boot against bare kernel boot, memory per idle pod and density against containerd+runc, as ratios
bench: deps build tools
	BIN=$(BIN) test/bench/pull.sh
	$(MAKE) guest GUEST_DIR=$(TEST_GUEST)
	BIN=$(BIN) COCOON_GUEST_DIR=$(TEST_GUEST) test/bench/pods.sh
	BIN=$(BIN) COCOON_GUEST_DIR=$(TEST_GUEST) test/bench/memory.sh
	CGO_ENABLED=1 COCOON_INTEGRATION=1 COCOON_GUEST_DIR=$(TEST_GUEST) $(GO) test -run XXX -bench GuestBoot -benchtime $${BOOTS:-5}x ./test/e2e/
	CGO_ENABLED=1 COCOON_INTEGRATION=1 COCOON_GUEST_DIR=$(TEST_GUEST) $(GO) test -run XXX -bench QEMUColdBoot -benchtime $${BOOTS:-10}x ./vm/qemu/
	CGO_ENABLED=1 COCOON_INTEGRATION=1 COCOON_GUEST_DIR=$(TEST_GUEST) COCOON_CYCLES=$${CYCLES:-50} $(GO) test -count=1 -v -timeout 30m -run BootStopCycles ./vm/qemu/ | grep -E "cycles|^(---|ok|FAIL)"

## generate: regenerate committed generated code (protoc from Debian, plugins pinned in go.mod)
## and docs/CONFIG.md from the config structs
generate:
	$(GO) generate ./api/... ./config/...

fmt:
	gofmt -l -w $$(git ls-files '*.go')

vet:
	$(GO) vet ./...

clean:
	rm -rf $(BIN)
