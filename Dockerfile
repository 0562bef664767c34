# fleet-q container image (first version; the deployment issue completes it).
# Multi-stage: dependencies are built in their own layer so source edits do not
# rebuild them; the runtime image holds only the binary and CA certificates.

FROM rust:1.89-bookworm AS build
WORKDIR /src
# Dependency layer: manifests plus empty targets, built once and cached.
COPY Cargo.toml Cargo.lock ./
COPY actors/Cargo.toml actors/Cargo.toml
RUN mkdir -p src actors/src benches \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs actors/src/lib.rs \
 && echo 'fn main() {}' > benches/sqlite_store.rs \
 && cargo build --release --locked --bin fleet-q \
 && rm -rf src actors/src benches
COPY . .
RUN touch src/main.rs src/lib.rs actors/src/lib.rs \
 && cargo build --release --locked --bin fleet-q

FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="fleet-q" \
      org.opencontainers.image.description="A brokerless distributed step queue" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 1000 fleetq && useradd --uid 1000 --gid 1000 --no-create-home fleetq \
 && mkdir -p /var/lib/fleet-q && chown 1000:1000 /var/lib/fleet-q
COPY --from=build /src/target/release/fleet-q /usr/local/bin/fleet-q
# Everything fleet-q writes goes under /var/lib/fleet-q (mount an emptyDir there when
# the root filesystem is read-only).
ENV FLEET_Q_SQLITE_DB_PATH=/var/lib/fleet-q/fleet-q.db
USER 1000:1000
EXPOSE 8000
ENTRYPOINT ["fleet-q"]
CMD ["serve"]
