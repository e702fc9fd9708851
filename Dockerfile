# syntax=docker/dockerfile:1
# export-host: the host binary and the format plugins, on a small Debian
# runtime with CJK and Latin fonts (shared read-only with the PDF plugin).
#
#   docker build -t export-host .
#   docker run --rm -p 8000:8000 export-host            # embedded queue, data in /var/lib/export-host
#   docker compose -f deploy/docker-compose.yml up      # RocketMQ + 1 API + 2 workers + Prometheus
#
# The toolchain comes from rust-toolchain.toml (Rust 1.95.0 + wasm32-wasip2).

ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=bookworm

# ---- build: host (native) and plugins (wasm32-wasip2 components) ----------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
# Toolchain first (its own layer): rustup reads rust-toolchain.toml.
COPY rust-toolchain.toml ./
RUN rustup show active-toolchain && rustup target add wasm32-wasip2
COPY . .
# Every format plugin except the starter template; the host with the
# versions in Cargo.lock. Caches keep rebuilds incremental.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eux; \
    for c in plugins/*/Cargo.toml; do n="${c#plugins/}"; n="${n%/Cargo.toml}"; \
      case "$n" in kit|template) ;; *) echo "$n" ;; esac; done > /tmp/plugins; \
    xargs scripts/build-plugins.sh < /tmp/plugins; \
    cargo build --release --locked -p export-host; \
    mkdir -p /out/plugins; \
    cp target/release/export-host /out/; \
    cp plugins/dist/*.wasm /out/plugins/

# ---- runtime ---------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# Versions follow the Debian release (security updates included), not pins.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates fonts-noto-cjk fonts-dejavu-core tini \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/export-host --create-home export-host \
 && mkdir -p /srv/export-host/shared /opt/export-host/plugins /etc/export-host \
 && chown export-host:export-host /srv/export-host/shared /opt/export-host/plugins
COPY --from=build /out/export-host /usr/local/bin/export-host
COPY --from=build --chown=export-host:export-host /out/plugins/ /opt/export-host/plugins/
COPY deploy/export-host-embedded.yaml /etc/export-host/export-host.yaml
COPY config/alerts.yml /etc/export-host/alerts.yml
USER 10001:10001
WORKDIR /var/lib/export-host
ENV EXPORT_HOST_LOG_FORMAT=json
EXPOSE 8000
VOLUME ["/var/lib/export-host"]
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/export-host"]
CMD ["serve", "--config", "/etc/export-host/export-host.yaml"]
