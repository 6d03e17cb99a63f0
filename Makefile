# Tether: make demo runs the whole path on loopback; make test runs the tests.
GO      ?= go
BIN     ?= bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
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

# Static binaries for the CPUs our devices have.
cross:
	./cross/build.sh $(BIN)/cross

clean:
	rm -rf $(BIN) $(ACCEPTANCE)/node_modules
