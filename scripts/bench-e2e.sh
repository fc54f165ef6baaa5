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
#   INGESTS=1 SESSIONIZES=1              instances of each service, in their consumer groups
#   SKEW=6h                              windows.max_partition_skew (default: the config's)
#   TIMEOUT=900                          seconds to wait for one format before failing
#
# For each format: a seeded generated log (GenConfig::scaled(EVENTS), with its
# 2 % duplicates and up to 2 h of disorder) is produced to a fresh raw topic
# first; then `wafunnel ingest` and `wafunnel sessionize` start as separate
# processes and the clock runs until `input_accounting` in ClickHouse counts
# every record (so every row they produced is written and queryable; for
# `meta`, every event of every body, as input_accounting counts them). CPU is
# read from /proc/<pid>/stat (utime+stime) of each stage (summed over its
# instances), of the Kafka broker and of the ClickHouse server, as deltas
# over the run; peak resident memory from /proc/<pid>/status (VmHWM, the
# largest instance). "steady" is the rate between 10 % and 90 % of the
# records counted (no start-up, no tail); "per cpu-second" divides the
# records by the CPU-seconds of the wafunnel services alone.
# Prints one result line per format; the services are left running
# (deploy/local/down.sh stops them).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export WAFUNNEL_LOCAL="${WAFUNNEL_LOCAL:-$root/.local}"
events="${1:-1000000}"
formats="${FORMATS:-json avro-single-object}"
partitions="${PARTITIONS:-4}"
ingests="${INGESTS:-1}"
sessionizes="${SESSIONIZES:-1}"

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
sum_ticks() { # utime+stime of several pids, summed
  local total=0 p
  for p in "$@"; do total=$((total + $(cpu_ticks "$p"))); done
  echo "$total"
}
peak_mb() { # the largest VmHWM of several pids, in MB
  local p
  for p in "$@"; do awk '/^VmHWM:/ { print $2 }' "/proc/$p/status" 2>/dev/null || true; done |
    sort -n | tail -1 | awk '{ printf "%.0f", $1 / 1024 }'
}
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
  for t in "$raw:$partitions" ${extra_topics[@]+"${extra_topics[@]}"} "events-$suffix:$partitions" "dead-$suffix:1" "capi-$suffix:$partitions"; do
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
capi = "capi-$suffix"
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
  ingest_pids=()
  for i in $(seq "$ingests"); do
    RUST_LOG=warn WAFUNNEL__METRICS__LISTEN=127.0.0.1:0 "$bin" --config "$cfg" ingest 2>"$work/ingest-$i-$suffix.log" &
    ingest_pids+=("$!")
  done
  sessionize_pids=()
  for i in $(seq "$sessionizes"); do
    RUST_LOG=warn WAFUNNEL__METRICS__LISTEN=127.0.0.1:0 "$bin" --config "$cfg" sessionize 2>"$work/sessionize-$i-$suffix.log" &
    sessionize_pids+=("$!")
  done
  # Each instance serves its metrics on a port of its own (any free one).
  pids+=("${ingest_pids[@]}" "${sessionize_pids[@]}")
  counted=0
  t10="" t90=""
  deadline=$((SECONDS + ${TIMEOUT:-900}))
  while [ "${counted:-0}" -lt "$records" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "bench-e2e: only ${counted:-0} of $records records accounted for after ${TIMEOUT:-900}s" >&2
      exit 1
    fi
    for p in "${pids[@]}"; do
      if ! kill -0 "$p" 2>/dev/null; then
        echo "bench-e2e: a service stopped; its log:" >&2
        tail -n 20 "$work"/*-"$suffix".log >&2
        exit 1
      fi
    done
    sleep 0.2
    counted=$(ch "$database" "SELECT sum(records) FROM input_accounting" 2>/dev/null || echo 0)
    if [ -z "$t10" ] && [ "${counted:-0}" -ge $((records / 10)) ]; then t10=$(now) c10=$counted; fi
    if [ -z "$t90" ] && [ "${counted:-0}" -ge $((records * 9 / 10)) ]; then t90=$(now) c90=$counted; fi
  done
  t1=$(now)
  ti=$(sum_ticks "${ingest_pids[@]}")
  ts=$(sum_ticks "${sessionize_pids[@]}")
  k1=$(cpu_ticks "$kafka_pid")
  c1=$(cpu_ticks "$ch_pid")
  mi=$(peak_mb "${ingest_pids[@]}")
  ms=$(peak_mb "${sessionize_pids[@]}")
  kill -INT "${pids[@]}"
  wait "${pids[@]}" || true
  pids=()
  elapsed=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  rate=$(awk -v n="$records" -v e="$elapsed" 'BEGIN { printf "%.0f", n / e }')
  steady=$(awk -v a="$t10" -v b="$t90" -v n=$((c90 - c10)) 'BEGIN { printf "%.0f", (b > a) ? n / (b - a) : 0 }')
  per=$(awk -v n="$records" -v i="$ti" -v s="$ts" -v k="$tck" 'BEGIN {
    printf "ingest %.1f, sessionize %.1f; %.0f records per cpu-second of the services",
      i / k * 1e6 / n, s / k * 1e6 / n, n / ((i + s) / k) }')
  rows=$(ch "$database" "SELECT count() FROM conversations")
  outcomes=$(ch "$database" "SELECT concat('applied ', toString(sum(applied)), ', duplicate ', toString(sum(duplicate)),
    ', late ', toString(sum(late)), ', dead-lettered ', toString(sum(dead_lettered))) FROM input_accounting")
  echo "$format: $records records in ${elapsed}s = $rate records/s end to end;" \
    "cpu s: ingest $(secs "$ti"), sessionize $(secs "$ts"), kafka $(secs $((k1 - k0))), clickhouse $(secs $((c1 - c0)));" \
    "steady $steady records/s (10 to 90 %); cpu µs per record: $per;" \
    "instances: $ingests ingest, $sessionizes sessionize; peak rss MB: ingest $mi, sessionize $ms;" \
    "$outcomes; $rows conversations"
  ch "" "DROP DATABASE IF EXISTS $database" >/dev/null
done
