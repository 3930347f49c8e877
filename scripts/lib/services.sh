# Shared by scripts/test.sh and scripts/demo.sh: install what is missing (Debian/Ubuntu,
# apt-get) and start RabbitMQ when it is not running. Source it; do not run it.

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  echo "installing: $*" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

pg_major() {
  ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1
}

# PostgreSQL server binaries, wal2json for that version, RabbitMQ, openssl (test certificates),
# and a C compiler (mimalloc and ring compile C code).
ensure_packages() {
  local need=()
  [ -n "$(pg_major)" ] && [ -x "/usr/lib/postgresql/$(pg_major)/bin/initdb" ] || need+=(postgresql postgresql-contrib)
  command -v rabbitmq-server >/dev/null 2>&1 || need+=(rabbitmq-server)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
  if [ ${#need[@]} -gt 0 ]; then apt_install "${need[@]}"; fi
  local major
  major=$(pg_major)
  if [ ! -f "/usr/lib/postgresql/$major/lib/wal2json.so" ]; then apt_install "postgresql-$major-wal2json"; fi
}

# Chromium and chromedriver, for the gateway's browser test.
ensure_browser() {
  local need=()
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
  if [ ${#need[@]} -gt 0 ]; then apt_install "${need[@]}"; fi
}

# A clean build and test run writes about 4.5 GiB (target/ 3.1 GiB, fuzz/target 1.4 GiB,
# measured): refuse to start a fresh one with less than 5 GiB free rather than fail half-way
# with "No space left on device" from the compiler.
check_disk_space() {
  local need_kib=$((5 * 1024 * 1024)) free_kib
  [ -d target ] && return 0
  free_kib=$(df -Pk . | awk 'NR == 2 {print $4}')
  if [ -n "$free_kib" ] && [ "$free_kib" -lt "$need_kib" ]; then
    echo "only $((free_kib / 1024)) MiB free on $(df -P . | awk 'NR == 2 {print $6}'); a clean build and" \
      "test run needs about 5 GiB (target/ and fuzz/target): free some space and run again" >&2
    return 1
  fi
}

# The oldest Rust the workspace claims to build with (rust-version in Cargo.toml).
rust_version() {
  sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml
}

# Checks that the workspace builds with the Rust it claims (rust-version), with rustup.
check_rust_version() {
  local version
  version=$(rust_version)
  if ! command -v rustup >/dev/null 2>&1; then
    echo "rustup is not installed: cannot check that Rust $version builds the workspace" >&2
    return 0
  fi
  rustup toolchain install "$version" --profile minimal >/dev/null 2>&1
  cargo "+$version" check --locked --workspace --all-targets --target-dir target/rust-version
  echo "Rust $version (rust-version) builds the workspace" >&2
}

# Nightly Rust and cargo-fuzz, for the fuzz targets (scripts/fuzz.sh).
ensure_fuzzer() {
  if ! command -v rustup >/dev/null 2>&1; then
    echo "rustup is not installed: the fuzz targets need nightly Rust" >&2
    return 1
  fi
  rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal >&2
  command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked >&2
}

rabbitmq_up() {
  (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null
}

ensure_rabbitmq() {
  if rabbitmq_up; then return 0; fi
  echo "starting RabbitMQ" >&2
  as_root rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 1 120); do
    if rabbitmq_up; then
      as_root rabbitmqctl -q await_startup >/dev/null 2>&1 || true
      return 0
    fi
    sleep 1
  done
  echo "RabbitMQ did not start on 127.0.0.1:5672" >&2
  return 1
}

rabbitmq_stream_up() {
  (exec 3<>/dev/tcp/127.0.0.1/5552) 2>/dev/null
}

# The stream protocol (plugin rabbitmq_stream, port 5552), for --publish-to stream.
ensure_rabbitmq_stream() {
  if rabbitmq_stream_up; then return 0; fi
  echo "enabling RabbitMQ's stream protocol (rabbitmq_stream)" >&2
  as_root rabbitmq-plugins enable rabbitmq_stream >/dev/null
  for _ in $(seq 1 60); do
    if rabbitmq_stream_up; then return 0; fi
    sleep 1
  done
  echo "RabbitMQ's stream protocol did not start on 127.0.0.1:5552" >&2
  return 1
}
