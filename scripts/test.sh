#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what it needs,
# starts a local Kafka broker and ClickHouse server (deploy/local), runs
# format and lint checks, unit, property and golden tests, the ClickHouse
# schema tests on the local server and on current ClickHouse (chdb), client
# logins through a BI driver, the HTML
# report rendered in headless Chromium, and the
# end-to-end tests against the real services, chaos test included
# (WAFUNNEL_CHAOS=0 skips it), then stops the services.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export WAFUNNEL_LOCAL="${WAFUNNEL_LOCAL:-$root/.local}"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# The Rust build needs only crates.io (librdkafka, OpenSSL and zstd are
# built from source); the tests need a ClickHouse server, and Chromium to
# render the HTML report.
need_apt=()
command -v clickhouse-server >/dev/null 2>&1 || need_apt+=(clickhouse-server clickhouse-client)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

venv="$WAFUNNEL_LOCAL/venv"
if [ ! -x "$venv/bin/python" ]; then
  echo "== creating the Python environment for the schema tests"
  mkdir -p "$WAFUNNEL_LOCAL"
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q -r tests/chdb/requirements.txt -r tests/clients/requirements.txt

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test (unit, property, golden)"
cargo test --workspace --locked

echo "== starting Kafka and ClickHouse"
trap 'deploy/local/down.sh >/dev/null 2>&1 || true' EXIT
# Not `eval "$(...)"`: a failed start would go unnoticed by `set -e`.
endpoints=$(deploy/local/up.sh)
eval "$endpoints"
export KAFKA_BOOTSTRAP CLICKHOUSE_URL CLICKHOUSE_USERS_DIR KAFKA_SASL_BOOTSTRAP KAFKA_TLS_CA KAFKA_TLS_CERT KAFKA_TLS_KEY \
  KAFKA_SCRAM_USER KAFKA_SCRAM_PASSWORD KAFKA_PLAIN_USER KAFKA_PLAIN_PASSWORD

echo "== ClickHouse schema on the local server and on chdb"
CLICKHOUSE_URL="$CLICKHOUSE_URL" "$venv/bin/python" -m pytest tests/chdb -q -p no:cacheprovider

echo "== the HTML report in headless Chromium, offline and from ClickHouse"
cargo test -p wafunnel --test browser --locked -- --include-ignored

echo "== capi service on Kafka and ClickHouse, with a Graph API stand-in"
cargo build -p wafunnel --locked
WAFUNNEL_BIN="$root/target/debug/wafunnel" \
  cargo test -p wafunnel-capi --test service --locked -- --include-ignored --test-threads=1

echo "== client logins through a BI driver (clickhouse-connect) on the local server"
WAFUNNEL_BIN="$root/target/debug/wafunnel" "$venv/bin/python" -m pytest tests/clients -q -p no:cacheprovider

echo "== end-to-end tests on Kafka and ClickHouse"
# The webhook receiver's slow-connection test holds about 2,600 sockets.
ulimit -n 8192 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "${WAFUNNEL_CHAOS:-1}" = 1 ]; then
  # The chaos test runs the services as processes it can kill -9. CI's
  # short variant: WAFUNNEL_CHAOS_EVENTS=30000, WAFUNNEL_CHAOS_OUTAGE_SECS=8;
  # the full one: WAFUNNEL_CHAOS_EVENTS=300000 WAFUNNEL_CHAOS_OUTAGE_SECS=45.
  cargo build -p wafunnel --locked
  export WAFUNNEL_BIN="$root/target/debug/wafunnel"
  cargo test -p wafunnel-stream --test e2e --locked -- --include-ignored --test-threads=1
else
  cargo build -p wafunnel --locked
  export WAFUNNEL_BIN="$root/target/debug/wafunnel"
  cargo test -p wafunnel-stream --test e2e --locked -- --include-ignored --test-threads=1 --skip kills_outages
fi
echo "== all tests passed"
