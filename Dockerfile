# Build stage: compile the release binary.
FROM rust:1-bookworm AS build
WORKDIR /src
# Everything the manifest names (library, binary, tests and benches), minus .dockerignore.
COPY . .
RUN cargo build --release --locked && strip target/release/things-receiver

# Runtime stage: a small Debian with the binary, running as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/things-receiver --create-home things
COPY --from=build /src/target/release/things-receiver /usr/local/bin/things-receiver
USER things
WORKDIR /var/lib/things-receiver
ENV THINGS_DATA_DIR=/var/lib/things-receiver/data \
    THINGS_LISTEN=0.0.0.0:8443
EXPOSE 8443
VOLUME ["/var/lib/things-receiver/data"]
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD curl -fsk https://localhost:8443/readyz || curl -fs http://localhost:8443/readyz || exit 1
ENTRYPOINT ["things-receiver"]
CMD ["serve"]
