# credbroker — the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
TOOLS := $(CURDIR)/.cache/tools/bin
export PATH := $(TOOLS):$(PATH)
export GOFLAGS := -buildvcs=false

BUF_VERSION              := v1.47.2
PROTOC_GEN_GO_VERSION    := v1.36.5
PROTOC_GEN_GO_GRPC_VER   := v1.5.1
GRPCURL_VERSION          := v1.9.2

.PHONY: all build test test-faults demo demo-ha demo-agent proto lint vet fmt tools clean

all: build

build:
	go build -o bin/credbroker ./cmd/credbroker
	go build -o bin/credbroker-agent ./cmd/credbroker-agent

## image: the container image deploy/kubernetes runs (Dockerfile; needs docker)
IMAGE ?= registry.example.org/credbroker:v0.1.0
.PHONY: image
image:
	docker build -t $(IMAGE) .

## test: every test, against throwaway databases the script starts and removes
test:
	scripts/test.sh

## test-faults: the full fault suite (50 kill -9 iterations, 30 s database outage; three replicas on one
## PostgreSQL store: kills at failpoints, a 20 s store outage, a partition) and its table
test-faults:
	scripts/test-faults.sh

## bench: floor vs broker benchmarks against a throwaway PostgreSQL → one table and bench.json (< 15 min)
.PHONY: bench
bench:
	scripts/bench.sh

## demo: throwaway database, dev certs, broker, issue → login → revoke
## (DB=postgres, the default, or DB=mysql for a throwaway MariaDB)
## (HA=1: three replicas on one PostgreSQL lease store, as make demo-ha)
DB ?= postgres
demo: $(TOOLS)/grpcurl
ifeq ($(HA),1)
	scripts/demo-ha.sh
else
	DB=$(DB) scripts/demo.sh
endif

## demo-ha: three replicas on one PostgreSQL lease store: issue through a, list
## through b, renew through c, kill -9 a, and b or c revokes on time
demo-ha: $(TOOLS)/grpcurl
	scripts/demo-ha.sh

## demo-agent: an app under `credbroker agent` (exec mode and a file) on a throwaway
## PostgreSQL, through one rotation and a revoke (about a minute)
demo-agent:
	scripts/demo-agent.sh

## proto: lint and regenerate the committed protobuf code (offline, local plugins)
proto: $(TOOLS)/buf $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc
	buf lint
	buf generate

vet:
	go vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

tools: $(TOOLS)/buf $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc $(TOOLS)/grpcurl

$(TOOLS)/buf:
	GOBIN=$(TOOLS) go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(TOOLS)/protoc-gen-go:
	GOBIN=$(TOOLS) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(TOOLS)/protoc-gen-go-grpc:
	GOBIN=$(TOOLS) go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VER)
$(TOOLS)/grpcurl:
	GOBIN=$(TOOLS) go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

clean:
	rm -rf bin .cache/pg-* .cache/mariadb-* .cache/demo

## fuzz: every native fuzz target in turn for FUZZTIME each, then a table of execs
## (failing inputs land in PKG/testdata/fuzz/FuzzX; plain `go test` replays the corpus)
FUZZTIME ?= 1m
.PHONY: fuzz
fuzz:
	FUZZTIME=$(FUZZTIME) scripts/fuzz.sh
