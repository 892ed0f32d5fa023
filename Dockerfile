# syntax=docker/dockerfile:1
# The one kvmesh binary (router, operator, node-cache, sim, …) on distroless.
#   docker build -t kvmesh:dev .
# Not built in this project's CI (no Docker engine there); scripts/e2e-kind.sh
# builds it on machines that have one.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin kvmesh \
    && cp target/release/kvmesh /kvmesh

# glibc + libgcc, no shell, no package manager; runs as nonroot (65532),
# the UID the operator's pods and the chart's securityContext expect.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /kvmesh /usr/local/bin/kvmesh
USER 65532:65532
# router proxy, admin (router and operator), node-cache admin, lm://, redis
EXPOSE 8080 9090 9091 65432 6379
ENTRYPOINT ["/usr/local/bin/kvmesh"]
