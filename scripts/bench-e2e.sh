#!/usr/bin/env bash
# End-to-end throughput: raw topic -> ingest -> internal topic -> sessionize
# -> rows queryable in ClickHouse, on the local services (deploy/local).
#
#   scripts/bench-e2e.sh [EVENTS]        default 1000000 valid events
#   FORMATS="json avro-single-object"    formats to measure (default both);
#                                        `meta` sends the campaign as Meta does:
#                                        webhook bodies and insights rows on their
#                                        own raw topics, the rest as JSON
#   PARTITIONS=4                         partitions of the raw and internal topics
#   SKEW=6h                              windows.max_partition_skew (default: the config's)
#   TIMEOUT=900                          seconds to wait for one format before failing
#
# For each format: a seeded generated log (GenConfig::scaled(EVENTS), with its
# 2 % duplicates and up to 2 h of disorder) is produced to a fresh raw topic
# first; then `wafunnel ingest` and `wafunnel sessionize` start as separate
# processes and the clock runs until `input_accounting` in ClickHouse counts
# every record (so every row they produced is written and queryable; for
# `meta`, every event of every body, as input_accounting counts them). CPU is
# read from /proc/<pid>/stat (utime+stime) of each stage, of the Kafka
# broker and of the ClickHouse server, as deltas over the run.
# Prints one result line per format; the services are left running
# (deploy/local/down.sh stops them).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export WAFUNNEL_LOCAL="${WAFUNNEL_LOCAL:-$root/.local}"
events="${1:-1000000}"
formats="${FORMATS:-json avro-single-object}"
partitions="${PARTITIONS:-4}"

eval "$(deploy/local/up.sh)"
export KAFKA_BOOTSTRAP CLICKHOUSE_URL

echo "== building (release)" >&2
cargo build --release --locked -q -p wafunnel --bin wafunnel
cargo build --release --locked -q -p wafunnel-stream --example bench_produce
bin="$root/target/release/wafunnel"
produce="$root/target/release/examples/bench_produce"

tck=$(getconf CLK_TCK)
cpu_ticks() { # utime+stime of a pid, in clock ticks (0 if gone)
  if [ -r "/proc/$1/stat" ]; then
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
  else
    echo 0
  fi
}
secs() { awk -v t="$1" -v k="$tck" 'BEGIN { printf "%.1f", t / k }'; }
now() { date +%s.%N; }
ch() { curl -sS --fail "$CLICKHOUSE_URL/${1:+?database=$1}" --data-binary "$2"; }

kafka_pid=$(cat "$WAFUNNEL_LOCAL/kafka/kafka.pid")
ch_pid=$(cat "$WAFUNNEL_LOCAL/clickhouse/clickhouse.pid")
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
numbers() { # the phone_number_ids of account $1 that bench_produce printed in $out
  case "$out" in
  *phone_numbers=*) tr ',' '\n' <<<"${out##*phone_numbers=}" | awk -F= -v a="$1" '$2 == a { printf "\"%s\"", $1 }' ;;
  esac
}

for format in $formats; do
  suffix="bench-$$-${format%%-*}"
  raw="raw-$suffix"
  database="wafunnel_${suffix//-/_}"
  raw_topics="{ name = \"$raw\", format = \"$format\" }"
  extra_topics=()
  if [ "$format" = meta ]; then
    raw_topics="{ name = \"$raw\", format = \"json\" }, { name = \"$raw-webhook\", format = \"whatsapp-webhook\" }, { name = \"$raw-insights\", format = \"meta-insights\" }"
    extra_topics=("$raw-webhook:$partitions" "$raw-insights:$partitions")
  fi
  for t in "$raw:$partitions" ${extra_topics[@]+"${extra_topics[@]}"} "events-$suffix:$partitions" "dead-$suffix:1"; do
    deploy/local/kafka-topics.sh --create --if-not-exists --topic "${t%%:*}" \
      --partitions "${t##*:}" --replication-factor 1 >/dev/null
  done
  deploy/local/kafka-topics.sh --create --if-not-exists --topic "state-$suffix" \
    --partitions "$partitions" --replication-factor 1 --config cleanup.policy=compact >/dev/null
  out=$("$produce" "$KAFKA_BOOTSTRAP" "$raw" "$partitions" "$format" "$events")
  # Outcomes, not records: a webhook body's events are counted one by one.
  records=${out#*outcomes=}
  records=${records%% *}
  echo "== $format: produced $out" >&2
  cfg="$work/$suffix.toml"
  cat >"$cfg" <<EOF
user_hash_key = "bench-user-hash-key-0123456789"
[kafka]
bootstrap = "$KAFKA_BOOTSTRAP"
ingest_group = "ingest-$suffix"
sessionize_group = "sessionize-$suffix"
[topics]
raw = [$raw_topics]
internal = "events-$suffix"
dead_letter = "dead-$suffix"
state = "state-$suffix"
[clickhouse]
url = "$CLICKHOUSE_URL"
database = "$database"
${SKEW:+[windows]
max_partition_skew = \"$SKEW\"}
[[accounts]]
id = "act_1001"
currency = "USD"
time_zone = "UTC"
phone_number_ids = [$(numbers act_1001)]
[[accounts]]
id = "act_2002"
currency = "BRL"
time_zone = "America/Sao_Paulo"
phone_number_ids = [$(numbers act_2002)]
[[accounts]]
id = "act_3003"
currency = "EUR"
time_zone = "Europe/Madrid"
phone_number_ids = [$(numbers act_3003)]
EOF
  RUST_LOG=warn "$bin" --config "$cfg" migrate >/dev/null

  k0=$(cpu_ticks "$kafka_pid")
  c0=$(cpu_ticks "$ch_pid")
  t0=$(now)
  RUST_LOG=warn "$bin" --config "$cfg" ingest 2>"$work/ingest-$suffix.log" &
  ingest_pid=$!
  RUST_LOG=warn "$bin" --config "$cfg" sessionize 2>"$work/sessionize-$suffix.log" &
  sessionize_pid=$!
  pids+=("$ingest_pid" "$sessionize_pid")
  counted=0
  deadline=$((SECONDS + ${TIMEOUT:-900}))
  while [ "${counted:-0}" -lt "$records" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "bench-e2e: only ${counted:-0} of $records records accounted for after ${TIMEOUT:-900}s" >&2
      exit 1
    fi
    if ! kill -0 "$ingest_pid" 2>/dev/null || ! kill -0 "$sessionize_pid" 2>/dev/null; then
      echo "bench-e2e: a service stopped; its log:" >&2
      tail -20 "$work"/*-"$suffix".log >&2
      exit 1
    fi
    sleep 0.2
    counted=$(ch "$database" "SELECT sum(records) FROM input_accounting" 2>/dev/null || echo 0)
  done
  t1=$(now)
  ti=$(cpu_ticks "$ingest_pid")
  ts=$(cpu_ticks "$sessionize_pid")
  k1=$(cpu_ticks "$kafka_pid")
  c1=$(cpu_ticks "$ch_pid")
  kill -INT "$ingest_pid" "$sessionize_pid"
  wait "$ingest_pid" "$sessionize_pid" || true
  pids=()
  elapsed=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  rate=$(awk -v n="$records" -v e="$elapsed" 'BEGIN { printf "%.0f", n / e }')
  rows=$(ch "$database" "SELECT count() FROM conversations")
  outcomes=$(ch "$database" "SELECT concat('applied ', toString(sum(applied)), ', duplicate ', toString(sum(duplicate)),
    ', late ', toString(sum(late)), ', dead-lettered ', toString(sum(dead_lettered))) FROM input_accounting")
  echo "$format: $records records in ${elapsed}s = $rate records/s end to end;" \
    "cpu s: ingest $(secs "$ti"), sessionize $(secs "$ts"), kafka $(secs $((k1 - k0))), clickhouse $(secs $((c1 - c0)));" \
    "$outcomes; $rows conversations"
  ch "" "DROP DATABASE IF EXISTS $database" >/dev/null
done
