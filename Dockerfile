# Portcullis container image: built from source, run as a non-root user on distroless.
#
#   docker build -t portcullis .
#   docker run --rm -p 8080:8080 -p 9091:9091 --read-only --tmpfs /run/portcullis \
#     -v "$PWD/gateway.toml:/etc/portcullis/gateway.toml:ro" portcullis
#
# The config must listen on 0.0.0.0 (and put pid_file and upgrade_sock under /run/portcullis,
# a tmpfs): see deploy/container.toml. A read-only root file system works; nothing else is
# written. SIGTERM drains (drain_delay, then grace_period) and exits.

FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked && strip target/release/portcullis

# glibc and libgcc only: distroless "cc", as user 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/portcullis /usr/bin/portcullis
COPY deploy/container.toml /etc/portcullis/gateway.toml
COPY conf/portcullis.schema.json /usr/share/doc/portcullis/portcullis.schema.json
USER nonroot:nonroot
EXPOSE 8080 9091
ENTRYPOINT ["/usr/bin/portcullis"]
CMD ["run", "-c", "/etc/portcullis/gateway.toml"]
