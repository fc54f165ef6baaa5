#!/usr/bin/env bash
# Start the local Kafka broker and ClickHouse server (idempotent) and print
# their endpoints, one KEY=value per line, so a caller can:
#   eval "$(deploy/local/up.sh)"
# Ports follow KAFKA_PORT, KAFKA_CONTROLLER_PORT, CLICKHOUSE_HTTP_PORT and
# CLICKHOUSE_TCP_PORT; state lives under WAFUNNEL_LOCAL (default <repo>/.local).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Start both at once; report every failure, not just the first.
"$here/kafka.sh" start &
kafka_job=$!
"$here/clickhouse.sh" start &
clickhouse_job=$!
failed=0
wait "$kafka_job" || failed=1
wait "$clickhouse_job" || failed=1
if ((failed)); then
  echo "up.sh: error: a local service failed to start (see above); 'deploy/local/down.sh' stops what did start" >&2
  exit 1
fi

echo "KAFKA_BOOTSTRAP=127.0.0.1:${KAFKA_PORT:-9092}"
echo "CLICKHOUSE_URL=http://127.0.0.1:${CLICKHOUSE_HTTP_PORT:-8123}"
