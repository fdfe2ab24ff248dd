# Respite: a static binary on distroless, running as a non-root user.
#
#   docker build --build-arg VERSION=$(git describe --always --dirty) -t respite .
#   docker run -v $PWD/deploy/config.yaml:/etc/respite/config.yaml:ro \
#       -p 127.0.0.1:6380:6380 -p 127.0.0.1:9121:9121 respite
#
# The configuration is not baked in: mount it at /etc/respite/config.yaml.
# The HEALTHCHECK probes the admin listener's /healthz on port 9121, so the
# mounted config must enable it (admin: 127.0.0.1:9121 or 0.0.0.0:9121).
# SIGTERM drains write-back queues for up to shutdown_timeout (30s by
# default): give `docker stop -t` / stop_grace_period more than that.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/respite ./cmd/proxy

# distroless has no shell and no HTTP client: the health probe is busybox's
# wget, a single statically linked binary (the musl variant of the official
# image), run directly by the exec-form HEALTHCHECK below.
FROM busybox:1.36.1-musl AS probe

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/respite /usr/local/bin/respite
COPY --from=probe /bin/busybox /usr/local/bin/busybox
USER nonroot:nonroot
EXPOSE 6380 9121
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:9121/healthz"]
ENTRYPOINT ["/usr/local/bin/respite"]
CMD ["-config", "/etc/respite/config.yaml"]
