# Builds the touchstream binary into a slim image (used by docker-compose.yml).
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p touchstream

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/touchstream /usr/local/bin/touchstream
COPY config /etc/touchstream
EXPOSE 9464
ENTRYPOINT ["touchstream"]
CMD ["run", "--config", "/etc/touchstream/touchstream.toml"]
