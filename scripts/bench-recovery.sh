#!/usr/bin/env bash
# Recovery: time from a sessionize start to processing again, with a
# partition of N open conversations restored from its snapshot, and the size
# of that snapshot in Kafka and on the broker's disk, on the local services
# (deploy/local).
#
#   scripts/bench-recovery.sh [CONVERSATIONS] [RUNS]   default 1000000 and 5
#
# Prints the example's key=value lines, then the state topic's size on disk.
# The services are left running (deploy/local/down.sh stops them).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export WAFUNNEL_LOCAL="${WAFUNNEL_LOCAL:-$root/.local}"
conversations="${1:-1000000}"
runs="${2:-5}"

eval "$(deploy/local/up.sh)"

echo "== building (release)" >&2
cargo build --release --locked -q -p wafunnel-stream --example bench_recovery
out=$(mktemp)
trap 'rm -f "$out"' EXIT
RUST_LOG="${RUST_LOG:-warn}" "$root/target/release/examples/bench_recovery" \
  "$KAFKA_BOOTSTRAP" "$CLICKHOUSE_URL" "$conversations" "$runs" | tee "$out"

topic=$(sed -n 's/^state_topic=//p' "$out")
open=$(sed -n 's/^open_conversations=//p' "$out")
# Every snapshot written so far is still on disk until compaction runs.
snapshots=$((runs + 1))
disk=$(du -sb "$WAFUNNEL_LOCAL/kafka/data/$topic-0" | cut -f1)
echo "state_topic_disk_bytes=$disk (holds $snapshots snapshots before compaction)"
awk -v d="$disk" -v n="$open" -v s="$snapshots" \
  'BEGIN { printf "disk_bytes_per_conversation_per_snapshot=%.1f\n", d / n / s }'
