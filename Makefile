# credbroker — the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
TOOLS := $(CURDIR)/.cache/tools/bin
export PATH := $(TOOLS):$(PATH)
export GOFLAGS := -buildvcs=false

BUF_VERSION              := v1.47.2
PROTOC_GEN_GO_VERSION    := v1.36.5
PROTOC_GEN_GO_GRPC_VER   := v1.5.1
GRPCURL_VERSION          := v1.9.2

.PHONY: all build test demo proto lint vet fmt tools clean

all: build

build:
	go build -o bin/credbroker ./cmd/credbroker

## test: every test, against throwaway databases the script starts and removes
test:
	scripts/test.sh

## demo: throwaway PostgreSQL, dev certs, broker, issue → login → revoke
demo: $(TOOLS)/grpcurl
	scripts/demo.sh

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
	rm -rf bin .cache/pg-* .cache/demo
