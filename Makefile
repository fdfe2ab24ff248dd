# Respite. `make test` is what CI runs (see .ci/run).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

GO ?= go
FUZZTIME ?= 60s

.PHONY: demo test build bench redis-suite chaos

# Run the proxy against the configured Redis, or throwaway servers, on
# config.yaml itself: edit it, then RESPITE RELOAD (or SIGHUP to the demo).
# Built, then run (not `go run`, which exits 1 after a Ctrl-C even when the
# demo stopped cleanly).
demo:
	bash scripts/deps.sh
	$(GO) build -o bin/demo ./internal/demo
	bin/demo -config config.yaml

# vet, all tests, then fuzz the RESP request reader and the dispatch path. Output is streamed
# through internal/testsum, which ends with "N passed, N failed, N skipped";
# the target fails if vet, any test, any package build or the fuzz run fails.
# The fuzz run is skipped when the tests already failed. Then Redis' own
# test suite, directly and through Respite (scripts/redis-suite.sh, about
# 10 minutes), which fails the target if a test passes directly but not
# through Respite (after one rerun of its unit: --retries 1).
test:
	bash scripts/deps.sh
	$(GO) vet ./...
	$(GO) build -o bin/testsum ./internal/testsum
	{ status=0; \
	  $(GO) test -json -count=1 -timeout 20m ./... || status=$$?; \
	  if [ $$status -ne 0 ]; then \
	    echo "fuzz run skipped: tests failed"; \
	  elif ! grep -qs 'func FuzzRequestStream' resp/*_test.go || ! grep -qs 'func FuzzDispatch' router/*_test.go; then \
	    echo "FAIL: fuzz target FuzzRequestStream (resp) or FuzzDispatch (router) not found"; status=1; \
	  else \
	    FUZZTIME=$(FUZZTIME) bash scripts/fuzz.sh || status=$$?; \
	  fi; \
	  exit $$status; } | bin/testsum
	bash scripts/redis-suite.sh

build:
	CGO_ENABLED=0 $(GO) build -o bin/respite ./cmd/proxy

bench:
	bash bench/passthrough.sh

# Redis 7.0.15's own Tcl test suite (external mode), each unit directly
# against a throwaway redis-server and through a throwaway Respite; lists
# the tests that differ (scripts/redis-suite.sh); `make test` runs it too.
# Options go in ARGS, e.g. make redis-suite ARGS='--units "multi pubsub"'.
redis-suite:
	bash scripts/redis-suite.sh $(ARGS)

# The whole-system chaos test (internal/chaos) for longer: CHAOS_DURATION
# of client load on plain, cache-aside, write-through and write-back keys
# with CHAOS_CYCLES fault cycles (SIGKILL of the proxy, Redis killed and
# restarted from its AOF, PostgreSQL stopped for 10 s); fails on any
# violation and prints the counts. `make test` runs it short (about a
# minute). CHAOS_SEED=<n> repeats a run's fault order and timing.
CHAOS_DURATION ?= 5m
CHAOS_CYCLES ?= 10
CHAOS_TIMEOUT ?= 2h
chaos:
	bash scripts/deps.sh
	CHAOS_DURATION=$(CHAOS_DURATION) CHAOS_CYCLES=$(CHAOS_CYCLES) \
	  $(GO) test -count=1 -v -timeout $(CHAOS_TIMEOUT) -run '^TestChaos$$' ./internal/chaos/
