# syntax=docker/dockerfile:1
# Development image: the full Rust toolchain, a debug build, a shell for poking around.
#   docker build -t chat-service:dev .
#   docker run --rm -p 8000:8000 chat-service:dev
#   docker run --rm --network host chat-service:dev cargo test --locked   # host's PostgreSQL, Redis
#   docker run --rm -it chat-service:dev bash
# For deployments use Dockerfile.production.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE}

# An unprivileged user that owns the work tree and the cargo caches; the same ids as the
# production image, so that both can use the same data volume.
RUN groupadd --system --gid 65532 app \
    && useradd --system --uid 65532 --gid app --home-dir /home/app --create-home app \
    && install -d -o app -g app /app /app/data
# `chat-service` on PATH is the debug build.
ENV CARGO_HOME=/home/app/.cargo \
    PATH=/app/target/debug:/usr/local/cargo/bin:$PATH
WORKDIR /app
USER 65532:65532

# Dependencies first, in their own layer.
COPY --chown=65532:65532 Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --locked \
    && cargo clean --package chat-service \
    && rm -rf src

COPY --chown=65532:65532 . .
RUN cargo build --locked

ENV HOST=0.0.0.0 \
    PORT=8000 \
    DATABASE_URL=sqlite:///app/data/chat.db \
    LOG_FORMAT=pretty \
    LOG_LEVEL=debug
VOLUME ["/app/data"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["chat-service", "healthcheck"]

CMD ["chat-service", "serve"]
