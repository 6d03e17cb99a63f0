# SPDX-License-Identifier: Apache-2.0
# Tether: make demo runs the whole path on loopback; make test runs the tests.
GO      ?= go
BIN     ?= bin
VERSION ?= $(shell scripts/version.sh)
LDFLAGS := -s -w -X main.version=$(VERSION)
CMDS    := tetherd tetherctl tether-server
FUZZTIME ?= 30s

ACCEPTANCE := e2e/acceptance

.PHONY: all build demo test vet fuzz cross clean

all: build

build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ $(addprefix ./cmd/,$(CMDS)) ./scripts/webhook-sink

demo: build
	BIN=$(abspath $(BIN)) ./scripts/demo.sh

# nats-server, from the module Tether requires, for a cluster
# (docs/scaling.md) and for demo-cluster.
.PHONY: nats-server demo-cluster
nats-server:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/ github.com/nats-io/nats-server/v2

# Three NATS servers and three tether-server nodes on loopback, with the
# commands README gives: a message down and up, a node killed.
demo-cluster: build nats-server
	BIN=$(abspath $(BIN)) ./scripts/cluster-demo.sh

# The C example, examples/c/tether-listen.c (sd-bus), into $(BIN)/ where
# a C compiler and libsystemd-dev are installed; elsewhere it says so and
# builds nothing (docs/ipc.md).
.PHONY: examples
examples:
	@$(MAKE) --no-print-directory -C examples/c OUT=$(abspath $(BIN))

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { gofmt -l .; echo "gofmt: the files above need formatting"; exit 1; }

test: vet $(ACCEPTANCE)/node_modules
	$(GO) test -race -count=1 -timeout 15m ./...

# Existing GCM client libraries that the end-to-end tests drive unchanged.
$(ACCEPTANCE)/node_modules: $(ACCEPTANCE)/package.json $(ACCEPTANCE)/package-lock.json
	cd $(ACCEPTANCE) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# Runs every fuzz target for FUZZTIME each (their seeds already run in make test).
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$f"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

# Static, stripped, reproducible binaries for the CPUs our devices have, in
# $(CROSS)/TARGET/, with a size report in $(CROSS)/sizes.txt (docs/firmware.md).
CROSS := $(BIN)/cross
# The device binaries' size budgets in KiB on ARMv7, the CPU the budgets
# are set for (docs/firmware.md): make size fails above them, and above
# each other target's ceiling in cross/size-ceilings.txt. Lower them when
# the binaries shrink; raise them only with a reason in the commit.
TETHERD_MAX_KIB ?= 6000
TETHERCTL_MAX_KIB ?= 2800
NFPM_VERSION := v2.45.0
NFPM := $(BIN)/tools/nfpm
PACKAGES := $(BIN)/packages

.PHONY: cross size package test-cross

# cross prints the size report; make size is the check that fails over
# budget, so that packages can still be built while a budget is a goal.
cross:
	VERSION=$(VERSION) ./cross/build.sh $(CROSS)
	@$(MAKE) --no-print-directory size || echo "cross: over a size budget (above); make size fails until it is met"

size:
	@TETHERD_MAX_KIB=$(TETHERD_MAX_KIB) TETHERCTL_MAX_KIB=$(TETHERCTL_MAX_KIB) ./cross/size.sh $(CROSS)

# .deb, .rpm, .apk and .ipk of tetherd, and .deb and .rpm of tether-server,
# for every target, in $(PACKAGES).
package: cross $(NFPM)
	./cross/package.sh $(NFPM) $(CROSS) $(PACKAGES)

$(NFPM):
	GOBIN=$(abspath $(dir $(NFPM))) $(GO) install github.com/goreleaser/nfpm/v2/cmd/nfpm@$(NFPM_VERSION)

# The ARM and MIPS binaries under qemu-user against an amd64 server, the
# .debs installed, run and removed on this machine (as root), and make
# release run twice for one target to the same bytes.
test-cross: package
	TETHER_CROSS=$(abspath $(CROSS)) TETHER_PACKAGES=$(abspath $(PACKAGES)) TETHER_BUILD_VERSION=$(VERSION) \
	  TETHER_NFPM=$(abspath $(NFPM)) \
	  $(GO) test -count=1 -timeout 10m -v ./cross/

# Every artefact of a release in $(RELEASE), with SHA256SUMS: for each
# target a tarball of its binaries with LICENSE and NOTICE and its packages,
# and the source with its modules vendored, for builds without a network.
# The same commit gives the same bytes: every timestamp is the commit's
# (SOURCE_DATE_EPOCH, which nfpm honours too), owners and modes are fixed,
# and files are in name order. RELEASE_TARGETS narrows it to some targets.
RELEASE_TARGETS ?=
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
RELEASE = $(BIN)/release/$(VERSION)
REPRO_TAR = tar --sort=name --mtime=@$(SOURCE_DATE_EPOCH) --owner=0 --group=0 --numeric-owner \
	--mode=u+rwX,go+rX,go-w --format=gnu

.PHONY: release
release: $(NFPM)
	rm -rf $(RELEASE) && mkdir -p $(RELEASE)/.work
	VERSION=$(VERSION) ./cross/build.sh $(RELEASE)/.work/cross $(RELEASE_TARGETS)
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) ./cross/package.sh $(NFPM) $(RELEASE)/.work/cross $(RELEASE)/.work/packages $(RELEASE_TARGETS)
	set -e; for d in $(RELEASE)/.work/cross/linux-*/; do \
	  t=$$(basename $$d); cp LICENSE NOTICE $$d; \
	  $(REPRO_TAR) -C $$d -cf - LICENSE NOTICE tetherd tetherctl tether-server | gzip -n9 >$(RELEASE)/tether-$(VERSION)-$$t.tar.gz; \
	  cp $(RELEASE)/.work/packages/$$t/* $(RELEASE)/; \
	done
	set -e; src=$(RELEASE)/.work/tether-$(VERSION); mkdir -p $$src; \
	  git archive HEAD | tar -x -C $$src; \
	  (cd $$src && $(GO) mod vendor); \
	  $(REPRO_TAR) -C $(RELEASE)/.work -cf - tether-$(VERSION) | gzip -n9 >$(RELEASE)/tether-$(VERSION)-src.tar.gz
	rm -rf $(RELEASE)/.work
	cd $(RELEASE) && sha256sum -- * >SHA256SUMS && cat SHA256SUMS

clean:
	rm -rf $(BIN) $(ACCEPTANCE)/node_modules

# tether-server's container image from the Dockerfile, with docker or
# podman where one runs; elsewhere cross/container_test.go (in make test,
# as root) builds the image's files and runs them with chroot.
IMAGE ?= tether-server:$(VERSION)
.PHONY: image
image:
	@engine=$$(command -v docker || command -v podman || true); \
	if [ -z "$$engine" ] || ! "$$engine" info >/dev/null 2>&1; then \
	  echo "image: no docker or podman that runs here: skipped"; exit 0; \
	fi; \
	echo "$$engine build -t $(IMAGE) ."; \
	"$$engine" build --build-arg VERSION=$(VERSION) -t $(IMAGE) .

# The connection server's throughput: accepted sends per second, single and
# multicast, over HTTP (the legacy API and FCM v1) and XMPP, FCM v1 access
# tokens granted per second, Web Push pushes per second, upstream messages
# per second over XMPP, and the time to fan a topic message out to 10,000
# and 100,000 subscribers (docs/server-api.md has figures).
.PHONY: bench-server
bench-server:
	$(GO) test -run '^$$' -bench '^Benchmark(Send|SendV1|TokenGrant|Multicast|WebPush|XMPP.*)$$' -benchtime 2s ./server/
	$(GO) test -run '^$$' -bench 'TopicFanout' -benchtime 1x -timeout 30m ./server/

# Fault injection: messages both ways through kills, resets, blackholes,
# slow links and clock jumps, every message accounted for
# (docs/reliability.md). make test runs a short version of it.
CHAOS_CYCLES ?= 50
.PHONY: chaos chaos-cluster
chaos:
	TETHER_CHAOS_CYCLES=$(CHAOS_CYCLES) $(GO) test -race -count=1 -timeout 60m -run '^TestChaos$$' -v ./e2e/

# The same on a cluster: three tether-server nodes on three nats-server
# processes, nodes and nats-servers killed, a nats-server cut off from the
# others (docs/scaling.md).
chaos-cluster:
	TETHER_CHAOS_CLUSTER=1 TETHER_CHAOS_CYCLES=$(CHAOS_CYCLES) $(GO) test -race -count=1 -timeout 90m -run '^TestChaosCluster$$' -v ./e2e/

# Sends, deliveries and latency on the bbolt default, one cluster node and
# three, on a three-server JetStream cluster in the process
# (docs/scaling.md has figures).
.PHONY: bench-cluster
bench-cluster:
	$(GO) test -run '^$$' -bench 'Cluster' -benchtime 3000x -timeout 30m ./server/

# Tether beside Mosquitto on this machine: latency, throughput, idle cost,
# sizes, with ratios (docs/benchmarks.md). Needs Debian's mosquitto and
# mosquitto-clients. BENCH_FLAGS passes flags on, e.g. '-n 10000 -idle 30s'.
BENCH_FLAGS ?=
.PHONY: bench
bench: build
	$(GO) build -o $(BIN)/idle-report ./scripts/idle-report
	$(GO) build -o $(BIN)/bench ./scripts/bench
	$(BIN)/bench -bin $(BIN) $(BENCH_FLAGS)

# The same runs with tetherd and tether-server built with -tags cpuprobe,
# writing CPU and allocation profiles of each throughput run to
# $(BIN)/profiles (read them with go tool pprof BINARY PROFILE).
.PHONY: bench-profile
bench-profile:
	mkdir -p $(BIN)/cpuprobe $(BIN)/profiles
	$(GO) build -tags cpuprobe -o $(BIN)/cpuprobe/ ./cmd/tetherd ./cmd/tether-server ./scripts/idle-report
	$(GO) build -o $(BIN)/bench ./scripts/bench
	$(BIN)/bench -bin $(BIN)/cpuprobe -profile $(abspath $(BIN))/profiles -arm-build=false $(BENCH_FLAGS)

# The connection server under load: 10,000 idle device sessions, then as
# many as its open-file limit allows, a message to each; memory per
# session, connect and delivery rates, over ws:// and then over wss://
# (docs/benchmarks.md has figures). LOAD_TLS=false or LOAD_TLS=true runs
# one of them; LOAD_FLAGS passes flags on, to load-cluster too.
LOAD_FLAGS ?=
LOAD_TLS ?= false true
# loadgen-each runs loadgen with the flags $(1), once for each of LOAD_TLS.
loadgen-each = set -e; for tls in $(LOAD_TLS); do $(BIN)/loadgen -bin $(BIN) -tls=$$tls $(1) $(LOAD_FLAGS); done
.PHONY: load load-cluster loadgen
loadgen: build
	$(GO) build -o $(BIN)/loadgen ./scripts/loadgen
load: loadgen
	$(call loadgen-each,)

# The same on a cluster: three tether-server nodes on three nats-server
# processes hold 10,000 sessions, then 30,000, more than one process may
# open here; each node's and each nats-server's memory, NATS
# subscriptions and JetStream's bytes per device (docs/scaling.md has
# figures).
load-cluster: loadgen nats-server
	$(call loadgen-each,-cluster 3 -conns 30000)

# What an idle tetherd costs: wake-ups, heartbeats and bytes each way over
# 5 minutes, on loopback (docs/power.md has figures). IDLE_FLAGS passes
# flags on, e.g. IDLE_FLAGS='-duration 30s' or '-heartbeat 4m -duration 10m'.
IDLE_FLAGS ?=
.PHONY: idle-report
idle-report: build
	$(GO) build -o $(BIN)/idle-report ./scripts/idle-report
	$(BIN)/idle-report -bin $(BIN) $(IDLE_FLAGS)
