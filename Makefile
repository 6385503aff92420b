# QuickScale. `make dev` runs the product locally; `make test` runs every test.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/.bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

# Pinned tool versions (installed into .bin by `make tools`).
STATICCHECK_VERSION := v0.7.0
STRIPE_MOCK_VERSION := v0.183.0
MAILPIT_VERSION := v1.33.1

export STRIPE_MOCK_BIN := $(BIN)/stripe-mock
export MAILPIT_BIN := $(BIN)/mailpit

.PHONY: dev build test lint bench tools tools-go tools-system vendor clean

## dev: run everything in one process on local defaults (see README)
dev:
	$(GO) run -ldflags "$(LDFLAGS)" ./cmd/quickscale dev

## build: build the binary into bin/quickscale
build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/quickscale ./cmd/quickscale

## test: run every test (installs the pinned test tools first)
test: tools
	$(GO) test -count=1 -timeout 30m ./...

## lint: gofmt, go vet and staticcheck must all be clean
lint: tools-go
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.bin/*')); \
	  if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(BIN)/staticcheck ./...

## bench: the ledger and webhook benchmarks, each next to a same-run pgbench reference
## (BENCH_DURATION sets each measurement's length; default 10s)
bench: tools
	@echo "QuickScale benchmarks ($$(nproc) cores; pgbench references measured in the same run)"
	$(GO) test -count=1 -timeout 60m -run '^$$' -bench . -benchtime 1x ./store ./cmd/quickscale

## tools: the pinned Go tools and the system packages tests need
tools: tools-go tools-system

tools-go: $(BIN)/staticcheck $(BIN)/stripe-mock $(BIN)/mailpit

$(BIN)/staticcheck:
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
$(BIN)/stripe-mock:
	GOBIN=$(BIN) $(GO) install github.com/stripe/stripe-mock@$(STRIPE_MOCK_VERSION)
$(BIN)/mailpit:
	GOBIN=$(BIN) $(GO) install github.com/axllent/mailpit@$(MAILPIT_VERSION)

# Debian's prometheus (promtool comes with it) for the metrics tests.
tools-system:
	@./.ci/system-packages

## vendor: re-fetch the front-end files from the npm registry
vendor:
	./web/static/vendor/fetch.sh

clean:
	rm -rf bin .bin
