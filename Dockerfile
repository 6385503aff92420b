# syntax=docker/dockerfile:1
#
# QuickScale: one static binary in a small, non-root image.
#   docker build --build-arg VERSION=$(git describe --tags --always) -t quickscale .
# The final stage is alpine (not distroless) so that compose healthchecks
# can call busybox wget against /readyz.

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION}-alpine AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=linux go build -trimpath \
      -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/quickscale ./cmd/quickscale

FROM alpine:3.20
RUN apk add --no-cache ca-certificates tzdata \
 && addgroup -S -g 10001 quickscale \
 && adduser -S -D -H -u 10001 -G quickscale quickscale
COPY --from=build /out/quickscale /usr/local/bin/quickscale
USER 10001:10001
# ADDR (site and API) and METRICS_ADDR (/metrics, /healthz, /readyz).
EXPOSE 8080 9464
ENTRYPOINT ["/usr/local/bin/quickscale"]
CMD ["api"]
