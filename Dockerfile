# syntax=docker/dockerfile:1
# coi-bridge container image: a release build of the daemon on Debian slim, run as a
# non-root user. deploy/compose.yaml shows it next to Synapse.
#
#   docker build -t coi-bridge .
#   docker run -d --name coi-bridge \
#     -v "$PWD/coi-bridge.toml:/etc/coi-bridge/coi-bridge.toml:ro" \
#     -v coi-bridge-state:/var/lib/coi-bridge \
#     -e COI_BRIDGE__ACCOUNT__PASSWORD_FILE=/run/secrets/mail-password \
#     -v "$PWD/mail-password:/run/secrets/mail-password:ro" \
#     coi-bridge
#
# The store (store.url = "sqlite://coi-bridge.db", relative to the state dir) lands in
# the volume /var/lib/coi-bridge: the image sets STATE_DIRECTORY, which the config's
# store.state_dir overrides. The HTTP listener defaults to 127.0.0.1:9187; set
# [http] listen = "0.0.0.0:9187" (or env COI_BRIDGE__HTTP__LISTEN) to reach /metrics
# and the appservice endpoint from outside the container.

# ---- build -----------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src
COPY . .
# The registry and target/ live in BuildKit cache mounts, so a rebuild after a source
# change recompiles only the workspace's own crates, not the ~600 dependencies.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin coi-bridge \
    && install -m 0755 target/release/coi-bridge /usr/local/bin/coi-bridge

# ---- run -------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: the system roots, for TLS to the mail servers and homeservers.
# Not pinned (DL3008): it must follow Debian's updates, and an exact version pin
# disappears from the archive with the next one and breaks the build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 coi-bridge \
    && useradd --system --uid 10001 --gid coi-bridge --no-create-home \
        --home-dir /var/lib/coi-bridge --shell /usr/sbin/nologin coi-bridge \
    && install -d -m 0700 -o coi-bridge -g coi-bridge /var/lib/coi-bridge \
    && install -d -m 0755 /etc/coi-bridge
COPY --from=builder /usr/local/bin/coi-bridge /usr/local/bin/coi-bridge

ENV COI_BRIDGE_CONFIG=/etc/coi-bridge/coi-bridge.toml \
    COI_BRIDGE_LOG_FORMAT=json \
    STATE_DIRECTORY=/var/lib/coi-bridge
VOLUME /var/lib/coi-bridge
WORKDIR /var/lib/coi-bridge
USER 10001:10001
# /metrics, /health, /ready and the Matrix appservice endpoint ([http] listen).
EXPOSE 9187
# `coi-bridge health` asks GET /health on the configured [http] listen address and
# exits 0 on 200.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["coi-bridge", "health"]
# SIGTERM (docker stop): the daemon finishes the current item and stops within 30 s,
# so give it `docker stop -t 40` (compose: stop_grace_period: 40s).
ENTRYPOINT ["coi-bridge"]
CMD ["run"]
