# Builds the touchstream binary into a slim image (used by docker-compose.yml).
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p touchstream -p touchstream-sim

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/touchstream /usr/local/bin/touchstream
# The journey simulator (load generator of docker-compose.yml).
COPY --from=build /src/target/release/touchstream-sim /usr/local/bin/touchstream-sim
COPY config /etc/touchstream
# Not root: a fixed unprivileged user (no files to write; state lives in Kafka).
RUN useradd --system --uid 10001 --no-create-home touchstream
USER 10001
EXPOSE 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["touchstream", "probe", "--path", "/healthz"]
ENTRYPOINT ["touchstream"]
CMD ["run", "--config", "/etc/touchstream/touchstream.toml"]
