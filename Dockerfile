# fleet-q container image.
#
# Stage 1 builds dependencies in their own layer (only manifests copied), so editing
# the source does not rebuild them; stage 2 is a minimal Debian runtime with the
# binary and CA certificates (for Snowflake over HTTPS), running as uid/gid 1000.
# Works with readOnlyRootFilesystem: true; everything fleet-q writes (the embedded
# SQLite store, the recovery ledger) goes under /var/lib/fleet-q, which the
# Kubernetes manifests back with an emptyDir (see deploy/).

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependency layer: manifests plus an empty stand-in for every target they declare
# (cargo refuses a manifest whose declared targets are missing). The stand-ins are
# derived from the manifests by docker/stub-targets.sh, never listed by hand, so a
# target added to Cargo.toml cannot break the image; tests/deploy.rs replays this
# stage's layout and runs cargo on it.
COPY Cargo.toml Cargo.lock ./
COPY actors/Cargo.toml actors/Cargo.toml
COPY docker/stub-targets.sh docker/stub-targets.sh
RUN sh docker/stub-targets.sh Cargo.toml actors/Cargo.toml > .stub-targets \
 && cargo fetch --locked \
 && cargo build --release --locked --bin fleet-q \
 && xargs rm -f < .stub-targets && rm .stub-targets
COPY . .
# Make sure cargo sees the real sources as newer than the stand-ins it built.
RUN find src actors/src -name '*.rs' -exec touch {} + \
 && cargo build --release --locked --bin fleet-q \
 && strip target/release/fleet-q

FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="fleet-q" \
      org.opencontainers.image.description="A brokerless distributed step queue: pods share only a database" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/fleet-q"
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 1000 fleetq \
 && useradd --uid 1000 --gid 1000 --no-create-home --shell /usr/sbin/nologin fleetq \
 && mkdir -p /var/lib/fleet-q && chown 1000:1000 /var/lib/fleet-q
COPY --from=build /src/target/release/fleet-q /usr/local/bin/fleet-q
ENV FLEET_Q_SQLITE_DB_PATH=/var/lib/fleet-q/fleet-q.db \
    FLEET_Q_LEDGER_PATH=/var/lib/fleet-q/ledger.db
USER 1000:1000
EXPOSE 8000
ENTRYPOINT ["fleet-q"]
CMD ["serve"]
