#!/usr/bin/env bash
# Webhook receiver throughput: verified POSTs per second, and per CPU-second
# of the receiver, into durable storage (Kafka acks=all) on the local broker.
#
#   scripts/bench-webhook.sh              3 rounds of 20 s
#   ROUNDS=5 SECONDS_PER_ROUND=30 CONNECTIONS=64 scripts/bench-webhook.sh
#
# The body is a WhatsApp Cloud API webhook with 2 messages (about 1 KB),
# signed with the app secret; wrk (Debian's package, installed if missing)
# posts it over keep-alive connections. Every answer must be 200 (a non-2xx
# fails the run). CPU is utime+stime of the receiver from /proc over the
# round. Prints one line per round and the median; the machine's load
# average is printed with each round.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export WAFUNNEL_LOCAL="${WAFUNNEL_LOCAL:-$root/.local}"
rounds="${ROUNDS:-3}"
duration="${SECONDS_PER_ROUND:-20}"
connections="${CONNECTIONS:-32}"

if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then apt-get install -y -qq wrk >/dev/null; else sudo apt-get install -y -qq wrk >/dev/null; fi
fi
eval "$(deploy/local/up.sh)"
cargo build --release --locked -q -p wafunnel --bin wafunnel
bin="$root/target/release/wafunnel"
work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

topic="bench-webhook-$$"
secret="bench-app-secret"
port=18080
cat >"$work/wafunnel.toml" <<TOML
user_hash_key = "bench-user-hash-key-0123"
[kafka]
bootstrap = "$KAFKA_BOOTSTRAP"
[topics]
raw = [{ name = "$topic", format = "whatsapp-webhook" }]
raw_partitions = 4
[clickhouse]
url = "$CLICKHOUSE_URL"
database = "bench_webhook"
[metrics]
listen = "127.0.0.1:19464"
[webhook]
listen = "127.0.0.1:$port"
verify_token = "bench-verify-token"
app_secret = "$secret"
TOML
"$bin" --config "$work/wafunnel.toml" check --create-topics --timeout-secs 1 >/dev/null 2>&1 || true

body='{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550001111","phone_number_id":"106540352242922"},"contacts":[{"profile":{"name":"Ana"},"wa_id":"5511987654321"}],"messages":[{"referral":{"source_url":"https://fb.me/abc","source_id":"120210000000001","source_type":"ad","headline":"Summer sale","ctwa_clid":"ARAkxyz_clid"},"from":"5511987654321","id":"wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFDNBRjA1","timestamp":"1772445600","type":"text","text":{"body":"I want to know more about the summer sale"}},{"from":"5511987654321","id":"wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFDNBRjA2","timestamp":"1772445610","type":"image","image":{"caption":"this one","mime_type":"image/jpeg","sha256":"abcdef","id":"1234567890"}}]}}]}]}'
signature="sha256=$(printf '%s' "$body" | openssl dgst -sha256 -hmac "$secret" -r | cut -d' ' -f1)"
lua="$work/post.lua"
cat >"$lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Hub-Signature-256"] = "$signature"
wrk.body = [[$body]]
done = function(summary, latency, requests)
  io.write(string.format("non2xx %d\n", summary.errors.status))
end
LUA

RUST_LOG=warn "$bin" --config "$work/wafunnel.toml" webhook 2>"$work/webhook.log" &
pid=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:19464/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -sf "http://127.0.0.1:19464/readyz" >/dev/null || { cat "$work/webhook.log" >&2; exit 1; }

tck=$(getconf CLK_TCK)
ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat"; }
# Warm-up: connections, producer batches, page cache.
wrk -t1 -c"$connections" -d3s -s "$lua" "http://127.0.0.1:$port/webhook" >/dev/null
results=()
for round in $(seq 1 "$rounds"); do
  before=$(ticks)
  out=$(wrk -t1 -c"$connections" -d"${duration}s" -s "$lua" "http://127.0.0.1:$port/webhook")
  after=$(ticks)
  rps=$(awk '/Requests\/sec/ { print $2 }' <<<"$out")
  total=$(awk '/requests in/ { print $1 }' <<<"$out")
  non2xx=$(awk '/^non2xx/ { print $2 }' <<<"$out")
  [ "$non2xx" = 0 ] || { echo "round $round: $non2xx answers were not 200" >&2; exit 1; }
  cpu=$(awk -v t=$((after - before)) -v k="$tck" 'BEGIN { printf "%.2f", t / k }')
  per_cpu=$(awk -v n="$total" -v c="$cpu" 'BEGIN { printf "%.0f", n / c }')
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  echo "round $round: $rps POST/s, $total POSTs, receiver CPU ${cpu} s, $per_cpu POSTs per CPU-second (load $load)"
  results+=("$per_cpu $rps")
done
printf '%s\n' "${results[@]}" | sort -n | awk -v n="$rounds" '
  { per[NR] = $1; rps[NR] = $2 }
  END {
    m = int((n + 1) / 2)
    printf "median: %s POSTs per CPU-second of the receiver (min %s, max %s); %s POST/s at that round\n", per[m], per[1], per[n], rps[m]
  }'
