# syntax=docker/dockerfile:1
# The credbroker image: `credbroker` (broker, agent and operator CLI; the
# entrypoint) and the slim `credbroker-agent`, statically linked, on
# distroless's static base (CA certificates and /etc/passwd, no shell), run
# as a non-root user. deploy/kubernetes runs it:
#
#   docker build -t registry.example.org/credbroker:v0.1.0 .    # or: make image
#
# The default command serves /etc/credbroker/credbroker.yaml; any other
# subcommand replaces it (`docker run IMAGE check-config --config …`).
ARG GO_VERSION=1.26
FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -buildvcs=false -trimpath -ldflags="-s -w" \
	-o /out/ ./cmd/credbroker ./cmd/credbroker-agent

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/credbroker /out/credbroker-agent /usr/local/bin/
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/credbroker"]
CMD ["serve", "--config", "/etc/credbroker/credbroker.yaml"]
