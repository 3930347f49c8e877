#!/usr/bin/env bash
# The quickstart: a throwaway PostgreSQL on port 5433 configured with the repository's
# postgresql.conf (wal_level = logical), the local RabbitMQ, a `users` table, the producer in the
# background and consumer_debug in the foreground. Ctrl-C stops everything. Installs what is
# missing first.
#
#   scripts/demo.sh
#   # in another terminal:
#   psql -h 127.0.0.1 -p 5433 -U postgres -c "INSERT INTO users (full_name, email) VALUES ('Ada', 'ada@example.com')"
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/services.sh

dir=${PGEVENTS_DEMO_DIR:-/tmp/pgevents-demo}
port=${PGEVENTS_DEMO_PORT:-5433}
ensure_packages
ensure_rabbitmq
cargo build --release --locked -p pgevents
bin=$PWD/target/release/pgevents
pgbin=/usr/lib/postgresql/$(pg_major)/bin
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

if [ ! -f "$dir/data/PG_VERSION" ]; then
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  as_pg "$pgbin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 >/dev/null
  cp postgresql.conf "$dir/pgevents.conf"
  {
    echo "include '$dir/pgevents.conf'"
    echo "port = $port"
    echo "unix_socket_directories = '$dir'"
    echo "listen_addresses = '127.0.0.1'"
  } >> "$dir/data/postgresql.conf"
  if as_pg "$pgbin/postgres" -D "$dir/data" -C output_plugin_libraries >/dev/null 2>&1; then
    echo "output_plugin_libraries = 'pgoutput, test_decoding, wal2json'" >> "$dir/data/postgresql.conf"
  fi
  [ "$(id -u)" = 0 ] && chown -R postgres "$dir"
fi
as_pg "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w status >/dev/null 2>&1 ||
  as_pg "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w start >/dev/null
psql -X -q -h 127.0.0.1 -p "$port" -U postgres -c \
  "CREATE TABLE IF NOT EXISTS users (id serial PRIMARY KEY, full_name text, email text, created_at timestamptz DEFAULT now())"

export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=postgres PGSSLMODE=disable
export PGTABLES=public.users RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672/%2f RABBITMQ_EXCHANGE=table_exchange
setsid "$bin" producer &  # own process group: Ctrl-C reaches it only through the trap
producer=$!
trap 'kill -TERM $producer 2>/dev/null; wait $producer 2>/dev/null; as_pg "$pgbin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null' EXIT
echo "producer running (pid $producer). In another terminal:" >&2
echo "  psql -h 127.0.0.1 -p $port -U postgres -c \"INSERT INTO users (full_name, email) VALUES ('Ada', 'ada@example.com')\"" >&2
"$bin" consumer_debug --format pretty
