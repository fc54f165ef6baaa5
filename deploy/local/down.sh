#!/usr/bin/env bash
# Stop the local Kafka broker and ClickHouse server started by up.sh
# (each script ends only the process recorded in its own pid file). Data is
# kept; use `kafka.sh reset` / `clickhouse.sh reset` to wipe it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

failed=0
"$here/kafka.sh" stop || failed=1
"$here/clickhouse.sh" stop || failed=1
exit "$failed"
