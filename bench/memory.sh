#!/usr/bin/env bash
# The server's memory with 1,000 tenants, in about a minute: the part of bench/gateway.sh that
# measures RSS, for comparing builds or allocator options (`_RJEM_MALLOC_CONF`) back to back.
#
#   cargo build --release --bin agentplane --examples && bash bench/memory.sh
#   BENCH_BIN=/path/to/other/agentplane bash bench/memory.sh
#
# On SQLite (a fresh data directory): 1,000 tenants set up through the API; then a restart and
# one request per tenant (idle RSS); then 4 s of saturation round-robin over the 1,000 keys;
# then 1,000 requests in flight against the 20 ms mock for 6 s, VmRSS sampled every 50 ms.
# Knobs: BENCH_BIN, BENCH_TENANTS (1000), BENCH_INFLIGHT (1000), BENCH_PORT_BASE (19200).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BENCH_BIN:-target/release/agentplane}
LG=target/release/examples/loadgen
MOCK=target/release/examples/mock_upstream
TENANTS=${BENCH_TENANTS:-1000}
INFLIGHT=${BENCH_INFLIGHT:-1000}
P=${BENCH_PORT_BASE:-19200}
GW=http://127.0.0.1:$((P + 80))
for f in "$BIN" "$LG" "$MOCK"; do
    [ -x "$f" ] || { echo "missing $f: cargo build --release --bin agentplane --examples" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/ap-memory.XXXXXX)
PIDS=()
SERVER=
cleanup() {
    [ -n "$SERVER" ] && kill -TERM "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

"$MOCK" --listen "127.0.0.1:$((P + 1))" --mode zero >/dev/null 2>&1 &
PIDS+=($!)
"$MOCK" --listen "127.0.0.1:$((P + 2))" --mode delay20 >/dev/null 2>&1 &
PIDS+=($!)
"$MOCK" --listen "127.0.0.1:$((P + 3))" --mode sse --chunks 16 --chunk-gap-ms 20 >/dev/null 2>&1 &
PIDS+=($!)

export AGENTPLANE_DATA_DIR=$WORK/data AGENTPLANE_LOG=warn AGENTPLANE_WORKER_POLL_INTERVAL_MS=100
JWT_SHARED_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export JWT_SHARED_SECRET
unset TENANT_CATALOG_DSN
mkdir -p "$WORK/data"

start() {
    "$BIN" serve --listen "127.0.0.1:$((P + 80))" >>"$WORK/server.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 300); do
        curl -s -o /dev/null "$GW/health" && return 0
        sleep 0.1
    done
    echo "the server did not start: $(tail -5 "$WORK/server.log")" >&2
    exit 1
}
stop() { kill -TERM "$SERVER" && wait "$SERVER" 2>/dev/null || true; SERVER=; }
mb() { awk -v k="$2" '$1 == k":" {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }

start
BENCH_ADMIN_TOKEN=$("$BIN" token --role platform_admin --ttl 3600)
export BENCH_ADMIN_TOKEN
"$LG" setup --base "$GW" --tenants "$TENANTS" --start 0 --mock-zero "http://127.0.0.1:$((P + 1))" \
    --mock-delay20 "http://127.0.0.1:$((P + 2))" --mock-sse "http://127.0.0.1:$((P + 3))" \
    --keys-out "$WORK/keys" --ids-out "$WORK/ids" >/dev/null
stop

start
sleep 2
restarted=$(mb "$SERVER" VmRSS)
"$LG" run --url "$GW/v1/chat/completions" --keys "$WORK/keys" --model bench-zero --rate 500 \
    --warmup 0 --duration "$(python3 -c "print($TENANTS / 500)")" --concurrency 64 >/dev/null 2>&1
sleep 2
warm=$(mb "$SERVER" VmRSS)
echo "idle RSS: restarted $restarted MB, after one request per tenant $warm MB (anon $(mb "$SERVER" RssAnon), file $(mb "$SERVER" RssFile))"
"$LG" run --url "$GW/v1/chat/completions" --keys "$WORK/keys" --model bench-zero --concurrency 64 \
    --duration 4 2>&1 | tail -1
"$LG" run --url "$GW/v1/chat/completions" --keys "$WORK/keys" --model bench-delay20 \
    --concurrency "$INFLIGHT" --duration 6 --rss-pid "$SERVER" --json "$WORK/inflight.json" 2>&1 | tail -1
python3 - "$WORK/inflight.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"{d['concurrency']} in flight: {d['rps']:.0f} req/s, RSS peak {d['rss_max_kb'] / 1024:.1f} MB")
PY
sleep 3
echo "RSS 3 s after the load: $(mb "$SERVER" VmRSS) MB"
