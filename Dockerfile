# syntax=docker/dockerfile:1
#
# toklock container image: one static musl binary on distroless, no shell, no Node.
#
#   docker buildx build --platform linux/amd64,linux/arm64 --build-arg VERSION=0.1.0 .
#
# rustc always runs on the build platform ($BUILDPLATFORM) and cross-compiles to the target
# platform's musl triple with cargo-zigbuild (zig is the C compiler and linker, so ring's C
# code cross-compiles too). No stage RUNs on the target platform, so no QEMU is needed.
# See docs/release.md.

ARG RUST_VERSION=1.95
ARG PYTHON_VERSION=3.13

# --- tools: zig and cargo-zigbuild, both shipped as PyPI wheels for the build platform --------
FROM --platform=$BUILDPLATFORM python:${PYTHON_VERSION}-slim-trixie AS tools
ARG ZIG_VERSION=0.14.1
ARG CARGO_ZIGBUILD_VERSION=0.24.1
RUN pip install --no-cache-dir --disable-pip-version-check --target /opt/tools \
        "ziglang==${ZIG_VERSION}" "cargo-zigbuild==${CARGO_ZIGBUILD_VERSION}"

# --- build: cross-compile the static musl binary ----------------------------------------------
FROM --platform=$BUILDPLATFORM rust:${RUST_VERSION}-slim-trixie AS build
COPY --from=tools /opt/tools/ziglang /opt/zig
COPY --from=tools /opt/tools/bin/cargo-zigbuild /usr/local/bin/cargo-zigbuild
ENV PATH="/opt/zig:${PATH}" \
    CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
RUN rustup target add x86_64-unknown-linux-musl aarch64-unknown-linux-musl
WORKDIR /src
# .dockerignore lets in only the Cargo workspace: manifests, lockfile and crates/.
COPY . .
ARG TARGETARCH
# The target dir is a cache mount (per-arch subdirectories, so both platforms can share it);
# the finished binary is copied out of it to /out.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    case "${TARGETARCH}" in \
      amd64) triple=x86_64-unknown-linux-musl ;; \
      arm64) triple=aarch64-unknown-linux-musl ;; \
      *) echo "unsupported TARGETARCH '${TARGETARCH}' (linux/amd64 and linux/arm64 only)" >&2; exit 1 ;; \
    esac \
 && cargo zigbuild --release --locked -p toklock --bin toklock --target "${triple}" \
 && install -D -m 0755 "target/${triple}/release/toklock" /out/toklock

# --- final: distroless static (CA certificates, /etc/passwd with uid 65532 "nonroot") ----------
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=0.0.0-dev
LABEL org.opencontainers.image.title="toklock" \
      org.opencontainers.image.description="Token-aware rate-limit queue proxy for the Anthropic Claude API" \
      org.opencontainers.image.source="https://github.com/toklock/toklock" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/toklock /toklock
# Listen on every interface inside the container (the binary's own default is 127.0.0.1).
ENV TOKLOCK_HOST=0.0.0.0 \
    TOKLOCK_PORT=4000
USER 65532:65532
EXPOSE 4000
# No shell or curl in the image: the binary checks itself. `toklock health` GETs
# /toklock/health on TOKLOCK_PORT (via 127.0.0.1 when the host is 0.0.0.0), exit 0 = healthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/toklock", "health"]
ENTRYPOINT ["/toklock"]
