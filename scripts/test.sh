#!/usr/bin/env bash
# The test command: installs what is missing (PostgreSQL server binaries, wal2json, RabbitMQ,
# openssl, a C compiler, Chromium and chromedriver, nightly Rust and cargo-fuzz), starts RabbitMQ
# and its stream protocol (plugin rabbitmq_stream) if needed, checks that the claimed minimum
# Rust (rust-version) builds the workspace, builds, runs every fuzz target for 10 seconds, and
# runs every test: unit, property, and the end-to-end
# tests against real servers (each test starts its own throwaway PostgreSQL cluster and uses the
# local RabbitMQ with its own names). Extra arguments go to the test runner.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/services.sh

check_disk_space
ensure_packages
ensure_browser
ensure_rabbitmq
ensure_rabbitmq_stream

# docker-compose.yml must stay valid (no Docker engine is needed for this check).
if [ -f docker-compose.yml ]; then
  if ! command -v docker-compose >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
    apt_install docker-compose
  fi
  # Both the default services and the cluster profile (three RabbitMQ nodes).
  for profile in "" "--profile cluster"; do
    if docker compose version >/dev/null 2>&1; then
      docker compose -f docker-compose.yml $profile config -q
    else
      docker-compose -f docker-compose.yml $profile config -q
    fi
  done
  echo "docker-compose.yml is valid, with and without --profile cluster" >&2
fi

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
check_rust_version
cargo build --locked --workspace --all-targets
scripts/fuzz.sh smoke
# Doc tests first, so that the run ends with the full summary of every other test.
if cargo nextest --version >/dev/null 2>&1; then
  cargo test --locked --workspace --doc
  cargo nextest run --locked --workspace --no-fail-fast "$@"
else
  cargo test --locked --workspace --no-fail-fast "$@"
fi
