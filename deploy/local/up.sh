#!/usr/bin/env bash
# Start the local Kafka broker and ClickHouse server (idempotent) and print
# their endpoints, one KEY=value per line (values shell-quoted), so a caller can:
#   eval "$(deploy/local/up.sh)"
# Keys: KAFKA_BOOTSTRAP (PLAINTEXT), KAFKA_SASL_BOOTSTRAP (SASL_SSL, client
# certificate required), KAFKA_TLS_CA, KAFKA_TLS_CERT, KAFKA_TLS_KEY (PEM
# files: CA, client certificate, client key), KAFKA_SCRAM_USER,
# KAFKA_SCRAM_PASSWORD (SCRAM-SHA-256 and -512), KAFKA_PLAIN_USER,
# KAFKA_PLAIN_PASSWORD (PLAIN), CLICKHOUSE_URL, CLICKHOUSE_USERS_DIR (the
# server's users.d, reloaded while it runs); see kafka.sh for the details.
# Ports follow KAFKA_PORT, KAFKA_SASL_PORT, KAFKA_CONTROLLER_PORT,
# CLICKHOUSE_HTTP_PORT and CLICKHOUSE_TCP_PORT; state lives under
# WAFUNNEL_LOCAL (default <repo>/.local).
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

"$here/kafka.sh" env
echo "CLICKHOUSE_URL=http://127.0.0.1:${CLICKHOUSE_HTTP_PORT:-8123}"
printf 'CLICKHOUSE_USERS_DIR=%q\n' "${WAFUNNEL_LOCAL:-$(cd "$here/../.." && pwd)/.local}/clickhouse/users.d"
