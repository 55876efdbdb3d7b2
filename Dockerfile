# syntax=docker/dockerfile:1
# Ferry's images where a Docker engine exists (kind, hosted CI). One build
# stage compiles every binary as a static (musl) executable; each final stage
# is an empty root with one binary, run as a non-root user. Build from the
# repository root, choosing the image with --target:
#
#   docker build --target ferry-operator -t ghcr.io/ferry-dev/ferry-operator:dev .
#   docker build --target ferry-sidecar  -t ghcr.io/ferry-dev/ferry-sidecar:dev .
#   docker build --target ferry-loadgen  -t ghcr.io/ferry-dev/ferry-loadgen:dev .
#   docker build --target ferry-redirect -t ghcr.io/ferry-dev/ferry-redirect:dev .
#
# Without Docker, e2e/images/build.sh builds the same images as OCI archives.

FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl \
      -p ferry-operator -p ferry-sidecar -p ferry-e2e --bin ferry-operator --bin ferry-sidecar --bin ferry-loadgen \
 && for bin in ferry-operator ferry-sidecar ferry-loadgen; do \
      install -D -m 0755 "target/x86_64-unknown-linux-musl/release/$bin" "/out/$bin/$bin"; \
    done \
 && mkdir -p /out/root/etc /out/root/tmp && chmod 1777 /out/root/tmp \
 && printf 'root:x:0:0:root:/root:/sbin/nologin\nferry:x:65532:65532:ferry:/home/ferry:/sbin/nologin\n' >/out/root/etc/passwd \
 && printf 'root:x:0:\nferry:x:65532:\n' >/out/root/etc/group

# What every final image shares: passwd/group for the non-root user, /tmp, CA roots.
FROM scratch AS base
COPY --from=build /out/root/ /
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
LABEL org.opencontainers.image.source="https://github.com/ferry-dev/ferry" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 65532:65532

FROM base AS ferry-loadgen
COPY --from=build /out/ferry-loadgen/ /
LABEL org.opencontainers.image.title="ferry-loadgen" \
      org.opencontainers.image.description="Ferry's example application: writes and reads continuously and counts what it wrote."
ENTRYPOINT ["/ferry-loadgen"]

FROM base AS ferry-sidecar
COPY --from=build /out/ferry-sidecar/ /
LABEL org.opencontainers.image.title="ferry-sidecar" \
      org.opencontainers.image.description="Ferry's data plane: the dual-write CQL proxy and the backfill and validate Jobs."
ENTRYPOINT ["/ferry-sidecar"]

# The init container of `proxy.redirect: iptables`: a shell and iptables
# (nf_tables backend). It runs as root with NET_ADMIN and NET_RAW, in the
# pod's network namespace only, and exits once the rule is installed.
FROM debian:bookworm-slim AS ferry-redirect
RUN apt-get update && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*
LABEL org.opencontainers.image.title="ferry-redirect" \
      org.opencontainers.image.description="sh and iptables for the Ferry proxy redirect init container" \
      org.opencontainers.image.source="https://github.com/ferry-dev/ferry" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/bin/sh", "-c"]

# Last, so that a plain `docker build .` gives the operator.
FROM base AS ferry-operator
COPY --from=build /out/ferry-operator/ /
LABEL org.opencontainers.image.title="ferry-operator" \
      org.opencontainers.image.description="Ferry's control plane: the CassandraMigration controller and the sidecar-injection webhook."
ENTRYPOINT ["/ferry-operator"]
CMD ["run"]
