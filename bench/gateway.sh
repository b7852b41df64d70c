#!/usr/bin/env bash
# Gateway load benchmark: the mock upstream called directly, then the execution gateway
# (`POST /v1/chat/completions` with a tenant API key) on SQLite and on PostgreSQL, with 1 and
# with 1,000 tenants. See bench/README.md, "Gateway load". Not part of CI.
#
#   bash bench/gateway.sh
#
# Knobs (environment): BENCH_BACKENDS (sqlite,postgres), BENCH_TENANTS (1000), BENCH_DURATION
# (8 s per measured run), BENCH_CONCURRENCY (64 closed-loop workers for throughput),
# BENCH_STREAMS (256), BENCH_INFLIGHT (1000), BENCH_PORT_BASE (18100),
# AGENTPLANE_TEST_PG_URL (postgres://postgres@127.0.0.1:5432/postgres, an owner that may
# CREATE DATABASE), BENCH_OUT (target/bench-gateway/<time>), BENCH_NO_BUILD=1, BENCH_BIN (the
# server binary, target/release/agentplane).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BACKENDS=${BENCH_BACKENDS:-sqlite,postgres}
TENANTS=${BENCH_TENANTS:-1000}
DUR=${BENCH_DURATION:-8}
CONC=${BENCH_CONCURRENCY:-64}
STREAMS=${BENCH_STREAMS:-256}
INFLIGHT=${BENCH_INFLIGHT:-1000}
PORT_BASE=${BENCH_PORT_BASE:-18100}
PG_URL=${AGENTPLANE_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
OUT=${BENCH_OUT:-$ROOT/target/bench-gateway/$(date +%Y%m%d-%H%M%S)}
C1_DUR=5     # seconds of the concurrency-1 runs
CHUNKS=16    # content chunks per stream (the mock's default)

P_ZERO=$((PORT_BASE + 1))
P_DELAY=$((PORT_BASE + 2))
P_SSE=$((PORT_BASE + 3))
P_PROXY=$((PORT_BASE + 4))
P_GW=$((PORT_BASE + 80))
MOCK_ZERO=http://127.0.0.1:$P_ZERO/v1
MOCK_DELAY=http://127.0.0.1:$P_DELAY/v1
MOCK_SSE=http://127.0.0.1:$P_SSE/v1
PROXY=http://127.0.0.1:$P_PROXY/v1
GW=http://127.0.0.1:$P_GW
GW_URL=$GW/v1/chat/completions

TOOLS=$ROOT/target/bench-tools # under target/: ignored by git
OHA=$TOOLS/bin/oha
OHA_VERSION=1.16.0
BIN=${BENCH_BIN:-$ROOT/target/release/agentplane}
MOCK=$ROOT/target/release/examples/mock_upstream
LG=$ROOT/target/release/examples/loadgen

say() { printf '\n== %s\n' "$*" >&2; }
note() { printf '   %s\n' "$*" >&2; }
die() {
    printf 'gateway.sh: %s\n' "$*" >&2
    exit 1
}

for tool in curl python3; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
START_TS=$(date +%s)
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/ap-gwbench.XXXXXX)
PIDS=()
SERVER_PID=
PG_DB=
CHILD=

cleanup() {
    set +e
    if [ -n "$CHILD" ]; then kill -TERM "$CHILD" 2>/dev/null; fi
    if [ -n "$SERVER_PID" ]; then kill -TERM "$SERVER_PID" 2>/dev/null; fi
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}" $SERVER_PID; do wait "$pid" 2>/dev/null; done
    if [ -n "$PG_DB" ]; then
        psql "$PG_URL" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in $P_ZERO $P_DELAY $P_SSE $P_PROXY $P_GW; do
    port_busy "$p" && die "port $p is in use (set BENCH_PORT_BASE)"
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------------------------------------------------------------------------------------------
# Tools and binaries

if [ ! -x "$OHA" ]; then
    say "installing oha $OHA_VERSION into $TOOLS (once; several minutes on 2 cores)"
    cargo install oha --version "$OHA_VERSION" --locked --root "$TOOLS"
fi
if [ -z "${BENCH_NO_BUILD:-}" ]; then
    say "building release binaries"
    cargo build --release --bin agentplane --example mock_upstream --example loadgen
fi

# ---------------------------------------------------------------------------------------------
# Helpers

# Runs a command in the background and waits for it: a signal interrupts `wait` at once (not
# after the command), and the EXIT trap stops the command.
run_child() {
    "$@" &
    CHILD=$!
    local rc=0
    wait "$CHILD" || rc=$?
    CHILD=
    return "$rc"
}

wait_http() { # url seconds
    local i
    for ((i = 0; i < $2 * 20; i++)); do
        curl -s -o /dev/null "$1" && return 0
        sleep 0.05
    done
    return 1
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

mock_calls() { # requests served by the three mocks so far
    local total=0 p n
    for p in $P_ZERO $P_DELAY $P_SSE; do
        n=$(curl -s "http://127.0.0.1:$p/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
        total=$((total + n))
    done
    echo "$total"
}

body() { # model [stream]
    if [ "${2:-}" = stream ]; then
        printf '{"model":"%s","messages":[{"role":"system","content":"You are a terse benchmark assistant."},{"role":"user","content":"Say hello in one short sentence."}],"stream":true,"stream_options":{"include_usage":true}}' "$1"
    else
        printf '{"model":"%s","messages":[{"role":"system","content":"You are a terse benchmark assistant."},{"role":"user","content":"Say hello in one short sentence."}]}' "$1"
    fi
}

# oha NAME URL KEY MODEL [oha args...]: one oha run, JSON to $OUT/NAME.oha.json. KEY "" = none.
oha_run() {
    local name=$1 url=$2 key=$3 model=$4
    shift 4
    local auth=()
    [ -n "$key" ] && auth=(-H "authorization: Bearer $key")
    local t0 rc=0
    t0=$(date +%s)
    run_child "$OHA" --no-tui --output-format json -o "$OUT/$name.oha.json" -m POST \
        -T application/json -d "$(body "$model")" "${auth[@]}" "$@" "$url" >/dev/null 2>"$OUT/$name.oha.err" || rc=$?
    echo "$name.oha $t0 $(date +%s)" >>"$OUT/timeline.txt"
    if [ "$rc" != 0 ]; then
        note "$name: oha failed: $(head -c 300 "$OUT/$name.oha.err")"
        rm -f "$OUT/$name.oha.json"
        return 0
    fi
    python3 - "$OUT/$name.oha.json" "$name" <<'PY' >&2
import json, sys
d = json.load(open(sys.argv[1])); s = d["summary"]; p = d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {}); errs = d.get("errorDistribution", {})
ms = lambda v: "nan" if v is None else f"{v * 1000:.3f}"
print(f"   {sys.argv[2]}: {s['requestsPerSec']:.0f} req/s, p50 {ms(p.get('p50'))} p99 {ms(p.get('p99'))} "
      f"p99.9 {ms(p.get('p99.9'))} ms, status {codes}, errors {errs}")
PY
}

# warm_run URL KEY MODEL RATE CONNECTIONS: 2 s of oha at RATE, not measured.
warm_run() {
    local auth=()
    [ -n "$2" ] && auth=(-H "authorization: Bearer $2")
    run_child "$OHA" --no-tui -q "$4" --latency-correction -c "$5" -z 2s -m POST \
        -T application/json -d "$(body "$3")" "${auth[@]}" "$1" >/dev/null 2>&1 || true
}

# lg NAME [loadgen run args...]: one loadgen run, JSON to $OUT/NAME.lg.json.
lg_run() {
    local name=$1
    shift
    local t0 rc=0
    t0=$(date +%s)
    run_child "$LG" run --label "$name" --json "$OUT/$name.lg.json" "$@" >"$OUT/$name.lg.txt" 2>&1 || rc=$?
    echo "$name.lg $t0 $(date +%s)" >>"$OUT/timeline.txt"
    if [ "$rc" != 0 ]; then
        note "$name: loadgen failed: $(tail -c 300 "$OUT/$name.lg.txt")"
        return 0
    fi
    note "$(cat "$OUT/$name.lg.txt")"
}

jget() { # file python-expression-on-d
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1" 2>/dev/null || echo ""
}

# Other work skews every figure on a small machine: every 2 s, note the processes outside this
# script's tree (PostgreSQL's excepted: it serves the benchmark too) that used more than a
# fifth of a core.
python3 - "$OUT/busy.log" "$$" <<'PY' &
import os, sys, time
out, me = sys.argv[1], int(sys.argv[2])
hz = os.sysconf("SC_CLK_TCK")

def snapshot():
    procs = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
        except OSError:
            continue
        r = st.rfind(")")
        fields = st[r + 2:].split()
        procs[int(p)] = (st[st.find("(") + 1:r], int(fields[1]), int(fields[11]) + int(fields[12]))
    return procs

def ours(pid, procs):
    for _ in range(64):
        if pid == me:
            return True
        if pid <= 1 or pid not in procs:
            return False
        pid = procs[pid][1]
    return False

prev = snapshot()
while os.getppid() != 1:
    time.sleep(2)
    cur = snapshot()
    busy = {}
    for pid, (comm, _, t) in cur.items():
        if pid in prev and comm != "postgres" and not ours(pid, cur):
            cores = (t - prev[pid][2]) / hz / 2
            if cores > 0.2:
                name = comm.replace(" ", "_")
                busy[name] = busy.get(name, 0) + cores
    if busy:
        what = ",".join(f"{n}:{c:.1f}" for n, c in sorted(busy.items(), key=lambda x: -x[1]))
        with open(out, "a") as f:
            f.write(f"{int(time.time())} {time.strftime('%H:%M:%S')} {what}\n")
    prev = cur
PY
PIDS+=($!)

# ---------------------------------------------------------------------------------------------
# The mocks, and the direct baseline

say "starting the mocks (zero :$P_ZERO, delay20 :$P_DELAY, sse :$P_SSE)"
"$MOCK" --listen "127.0.0.1:$P_ZERO" --mode zero >"$OUT/mock-zero.log" 2>&1 &
PIDS+=($!)
"$MOCK" --listen "127.0.0.1:$P_DELAY" --mode delay20 >"$OUT/mock-delay20.log" 2>&1 &
PIDS+=($!)
"$MOCK" --listen "127.0.0.1:$P_SSE" --mode sse --chunks "$CHUNKS" --chunk-gap-ms 20 >"$OUT/mock-sse.log" 2>&1 &
PIDS+=($!)
for p in $P_ZERO $P_DELAY $P_SSE; do
    wait_http "http://127.0.0.1:$p/stats" 10 || die "mock on :$p did not start"
done
# A bare proxy to the zero mock (no parsing, no auth, no database): the ceiling for a gateway.
"$MOCK" --listen "127.0.0.1:$P_PROXY" --proxy-to "$MOCK_ZERO" >"$OUT/proxy.log" 2>&1 &
PIDS+=($!)
# A GET answers 405 once it listens.
wait_http "http://127.0.0.1:$P_PROXY/chat/completions" 10 || die "the proxy on :$P_PROXY did not start"

say "direct to the mock"
run_child "$OHA" --no-tui -z 1s -c 1 -m POST -T application/json -d "$(body x)" "$MOCK_ZERO/chat/completions" >/dev/null 2>&1 || true
oha_run direct.c1 "$MOCK_ZERO/chat/completions" "" bench-zero -c 1 -z "${C1_DUR}s" -w
oha_run direct.sat "$MOCK_ZERO/chat/completions" "" bench-zero -c "$CONC" -z "${DUR}s" -w
lg_run direct.sat --url "$MOCK_ZERO/chat/completions" --no-auth --concurrency "$CONC" --duration "$DUR"
say "through a bare proxy"
oha_run proxy.sat "$PROXY/chat/completions" "" bench-zero -c "$CONC" -z "${DUR}s" -w
lg_run proxy.sat --url "$PROXY/chat/completions" --no-auth --concurrency "$CONC" --duration "$DUR"
lg_run direct.ttft1 --url "$MOCK_ZERO/chat/completions" --no-auth --stream --expect-usage \
    --expect-chunks "$CHUNKS" --concurrency 1 --duration "$C1_DUR"
lg_run direct.s256 --url "$MOCK_SSE/chat/completions" --no-auth --stream --expect-usage \
    --expect-chunks "$CHUNKS" --concurrency "$STREAMS" --duration "$DUR"

# ---------------------------------------------------------------------------------------------
# The gateway, per backend

SECRET=$(head -c 48 /dev/urandom | od -An -tx1 | tr -d ' \n')

start_server() { # backend
    local be=$1 data=$WORK/$1
    mkdir -p "$data"
    export AGENTPLANE_DATA_DIR=$data JWT_SHARED_SECRET=$SECRET AGENTPLANE_LOG=${AGENTPLANE_LOG:-warn}
    export AGENTPLANE_WORKER_POLL_INTERVAL_MS=100
    unset TENANT_CATALOG_DSN
    if [ "$be" = postgres ]; then
        PG_DB=ap_gwbench_$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
        psql "$PG_URL" -v ON_ERROR_STOP=1 -qc "CREATE DATABASE $PG_DB" >/dev/null
        export TENANT_CATALOG_DSN=${PG_URL%/*}/$PG_DB
        "$BIN" migrate >"$OUT/$be.migrate.log" 2>&1 || die "migrate failed: $(tail -5 "$OUT/$be.migrate.log")"
    fi
    launch_server "$be"
}

launch_server() { # backend (the environment set by start_server)
    "$BIN" serve --listen "127.0.0.1:$P_GW" >>"$OUT/$1.server.log" 2>&1 &
    SERVER_PID=$!
    wait_http "$GW/health" 60 || die "the server did not start: $(tail -5 "$OUT/$1.server.log")"
}

kill_server() { # SIGTERM: drains in-flight requests
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

stop_server() {
    kill_server
    if [ -n "$PG_DB" ]; then
        psql "$PG_URL" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
        PG_DB=
    fi
    unset TENANT_CATALOG_DSN
}

bench_backend() { # backend
    local be=$1 keys=$WORK/$1.keys ids=$WORK/$1.ids
    : >"$keys"
    : >"$ids"
    say "$be: starting agentplane serve"
    start_server "$be"
    sleep 2
    local rss_fresh
    rss_fresh=$(rss_kb "$SERVER_PID")
    note "RSS idle, fresh: $((rss_fresh / 1024)) MB"
    local token
    token=$("$BIN" token --role platform_admin --ttl 7200)
    export BENCH_ADMIN_TOKEN=$token

    local code landed=false
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$GW_URL")
    [ "$code" = 401 ] && landed=true
    note "POST /v1/chat/completions without a key answers $code (gateway landed: $landed)"

    say "$be: setting up 1 tenant (plan, providers -> mocks, agents, API key)"
    local t0 setup1 setup_rest=0
    t0=$(date +%s.%N)
    run_child "$LG" setup --base "$GW" --tenants 1 --start 0 --mock-zero "$MOCK_ZERO" \
        --mock-delay20 "$MOCK_DELAY" --mock-sse "$MOCK_SSE" --keys-out "$keys" --ids-out "$ids" >&2 ||
        die "setup failed"
    setup1=$(python3 -c "import time; print(round(time.time() - $t0, 2))")
    local key
    key=$(head -1 "$keys")
    local models
    models=$(curl -s "$GW/v1/models" -H "authorization: Bearer $key")
    note "GET /v1/models with the key: $models"

    local calls0 rss_idle1 rss_load1=0 direct_calls=0
    calls0=$(mock_calls)
    if $landed; then
        local probe
        probe=$(curl -s -w ' HTTP %{http_code}' -X POST "$GW_URL" -H "authorization: Bearer $key" \
            -H 'content-type: application/json' -d "$(body bench-zero)")
        note "probe: ${probe:0:400}"
        case "$probe" in *' HTTP 200') ;; *)
            note "the gateway does not answer 200 to a valid request: gateway scenarios skipped"
            landed=false
            ;;
        esac
        probe=$(curl -sN -X POST "$GW_URL" -H "authorization: Bearer $key" \
            -H 'content-type: application/json' -d "$(body bench-zero stream)" | head -c 300 || true)
        note "stream probe: ${probe//$'\n'/ }"
    fi
    sleep 1
    rss_idle1=$(rss_kb "$SERVER_PID")
    note "RSS idle, 1 tenant set up: $((rss_idle1 / 1024)) MB"

    if $landed; then
        say "$be: 1 tenant"
        run_child "$OHA" --no-tui -z 1s -c 1 -m POST -T application/json -H "authorization: Bearer $key" \
            -d "$(body bench-zero)" "$GW_URL" >/dev/null 2>&1 || true
        oha_run "$be.c1" "$GW_URL" "$key" bench-zero -c 1 -z "${C1_DUR}s" -w
        oha_run "$be.sat1" "$GW_URL" "$key" bench-zero -c "$CONC" -z "${DUR}s" -w
        lg_run "$be.sat1" --url "$GW_URL" --key "$key" --model bench-zero --concurrency "$CONC" --duration "$DUR"
        local sat half
        sat=$(jget "$OUT/$be.sat1.oha.json" 'd["summary"]["requestsPerSec"]')
        half=$(python3 -c "print(max(1, int(float('${sat:-0}' or 0) / 2)))")
        # Enough connections for half the rate at 20 ms each, with room for queueing.
        local hconn=$((half / 25 + 64))
        note "gateway saturation ${sat%.*} req/s; delay20 runs at half: $half req/s ($hconn connections)"
        local d0 d1
        d0=$(mock_calls)
        # Each fixed-rate run follows a 2 s one of the same shape, not measured: the figure is
        # the steady state, not the opening of a few hundred connections (the gateway opens
        # its own to the mock too).
        warm_run "$MOCK_DELAY/chat/completions" "" bench-delay20 "$half" "$hconn"
        oha_run "$be.direct.half" "$MOCK_DELAY/chat/completions" "" bench-delay20 \
            -q "$half" --latency-correction -c "$hconn" -z "${DUR}s" -w
        lg_run "$be.direct.half" --url "$MOCK_DELAY/chat/completions" --no-auth --rate "$half" \
            --concurrency "$hconn" --duration "$DUR"
        d1=$(mock_calls)
        direct_calls=$((d1 - d0))
        warm_run "$GW_URL" "$key" bench-delay20 "$half" "$hconn"
        oha_run "$be.half" "$GW_URL" "$key" bench-delay20 \
            -q "$half" --latency-correction -c "$hconn" -z "${DUR}s" -w
        lg_run "$be.half" --url "$GW_URL" --key "$key" --model bench-delay20 --rate "$half" \
            --concurrency "$hconn" --duration "$DUR"
        lg_run "$be.ttft1" --url "$GW_URL" --key "$key" --model bench-zero --stream --expect-usage \
            --expect-chunks "$CHUNKS" --concurrency 1 --duration "$C1_DUR"
        lg_run "$be.s256" --url "$GW_URL" --key "$key" --model bench-sse --stream --expect-usage \
            --expect-chunks "$CHUNKS" --concurrency "$STREAMS" --duration "$DUR"
        sleep 2
        rss_load1=$(rss_kb "$SERVER_PID")
        note "RSS idle after the 1-tenant load: $((rss_load1 / 1024)) MB"
    fi

    if [ "$TENANTS" -gt 1 ]; then
        say "$be: setting up $((TENANTS - 1)) more tenants"
        t0=$(date +%s.%N)
        run_child "$LG" setup --base "$GW" --tenants $((TENANTS - 1)) --start 1 --mock-zero "$MOCK_ZERO" \
            --mock-delay20 "$MOCK_DELAY" --mock-sse "$MOCK_SSE" --keys-out "$keys" --ids-out "$ids" >&2 ||
            die "setup failed"
        setup_rest=$(python3 -c "import time; print(round(time.time() - $t0, 2))")
    fi
    sleep 2
    local rss_idle_n
    rss_idle_n=$(rss_kb "$SERVER_PID")
    note "RSS idle, $TENANTS tenants set up (after the 1-tenant load, if any): $((rss_idle_n / 1024)) MB"

    local rss_after=0 usage_line=
    if $landed; then
        say "$be: $TENANTS tenants"
        lg_run "$be.sat1000" --url "$GW_URL" --keys "$keys" --model bench-zero --concurrency "$CONC" --duration "$DUR"
        lg_run "$be.hot1000" --url "$GW_URL" --key "$key" --model bench-zero --concurrency "$CONC" --duration "$DUR"
        say "$be: $INFLIGHT requests in flight (delay20 mock, $TENANTS keys), RSS sampled"
        lg_run "$be.inflight" --url "$GW_URL" --keys "$keys" --model bench-delay20 \
            --concurrency "$INFLIGHT" --duration "$DUR" --rss-pid "$SERVER_PID"
        sleep 3
        rss_after=$(rss_kb "$SERVER_PID")
        note "RSS idle after the load: $((rss_after / 1024)) MB"
        run_child "$LG" usage --base "$GW" --ids "$ids" --json "$OUT/$be.usage.json" >/dev/null 2>&1 ||
            note "usage check failed"
        usage_line=$(cat "$OUT/$be.usage.json" 2>/dev/null || true)
    fi
    local calls1 hwm
    calls1=$(mock_calls)
    hwm=$(hwm_kb "$SERVER_PID")
    # Idle figures free of earlier load: a restart on the populated database, then (gateway
    # landed) one request per tenant, so every tenant's state has been loaded once.
    say "$be: restart on the database of $TENANTS tenants"
    kill_server
    launch_server "$be"
    sleep 2
    local rss_restart rss_warm=0
    rss_restart=$(rss_kb "$SERVER_PID")
    note "RSS idle after a restart: $((rss_restart / 1024)) MB"
    if $landed; then
        local n
        n=$(wc -l <"$keys")
        lg_run "$be.warm" --url "$GW_URL" --keys "$keys" --model bench-zero --rate 500 --warmup 0 \
            --duration "$(python3 -c "print($n / 500)")" --concurrency 64
        sleep 2
        rss_warm=$(rss_kb "$SERVER_PID")
        note "RSS idle after one request per tenant: $((rss_warm / 1024)) MB"
    fi
    cat >"$OUT/$be.meta.json" <<EOF
{"backend": "$be", "landed": $landed, "tenants": $(wc -l <"$ids"),
 "setup_1_s": $setup1, "setup_rest_s": $setup_rest,
 "rss_fresh_kb": $rss_fresh, "rss_idle_1_kb": $rss_idle1, "rss_after_load1_kb": $rss_load1,
 "rss_idle_n_kb": $rss_idle_n, "rss_after_load_kb": $rss_after, "vmhwm_kb": $hwm,
 "rss_restart_kb": $rss_restart, "rss_restart_warm_kb": $rss_warm,
 "upstream_calls": $((calls1 - calls0 - direct_calls))}
EOF
    [ -n "$usage_line" ] && note "usage over all tenants: $(tr -d '\n ' <<<"$usage_line"), upstream calls by the gateway: $((calls1 - calls0 - direct_calls))"
    stop_server
    unset BENCH_ADMIN_TOKEN
}

IFS=, read -r -a BE_LIST <<<"$BACKENDS"
for be in "${BE_LIST[@]}"; do
    case "$be" in
    sqlite) bench_backend sqlite ;;
    postgres)
        if psql "$PG_URL" -qtc 'select 1' >/dev/null 2>&1; then
            bench_backend postgres
        else
            say "postgres: nothing answers at $PG_URL (AGENTPLANE_TEST_PG_URL): skipped"
        fi
        ;;
    *) die "unknown backend $be" ;;
    esac
done

# ---------------------------------------------------------------------------------------------
# Summary

say "summary (also in $OUT/summary.md)"
python3 - "$OUT" "$DUR" "$CONC" "$STREAMS" "$INFLIGHT" "$TENANTS" "$CHUNKS" <<'PY' | tee "$OUT/summary.md"
import json, os, sys, platform
out, dur, conc, streams, inflight, tenants, chunks = sys.argv[1:]

def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

busy = []
try:
    busy = [l.split() for l in open(os.path.join(out, "busy.log")) if l.strip()]
except OSError:
    pass
spans = {}
try:
    for l in open(os.path.join(out, "timeline.txt")):
        n, a, b = l.split()
        spans[n] = (int(a), int(b))
except (OSError, ValueError):
    pass
def skewed(run):
    a, b = spans.get(run, (0, -1))
    return any(x[0].isdigit() and a <= int(x[0]) <= b for x in busy)

def oha(name):
    d = load(name + ".oha.json")
    if not d:
        return None
    p = d["latencyPercentiles"]
    codes = d.get("statusCodeDistribution", {})
    bad = sum(v for k, v in codes.items() if not k.startswith("2")) + sum(d.get("errorDistribution", {}).values())
    return {"rps": d["summary"]["requestsPerSec"], "p50": p["p50"] * 1000, "p99": p["p99"] * 1000,
            "errors": bad, "skewed": skewed(name + ".oha")}

def lg(name):
    d = load(name + ".lg.json")
    if not d:
        return None
    r = {"rps": d["rps"], "p50": d["latency"]["p50_ms"], "p99": d["latency"]["p99_ms"],
         "errors": d["errors"], "raw": d, "skewed": skewed(name + ".lg")}
    if d.get("ttft"):
        r["ttft50"], r["ttft99"] = d["ttft"]["p50_ms"], d["ttft"]["p99_ms"]
        r["bad"], r["frames"] = d["stream_bad"], d["frames"]
    if "rss_max_kb" in d:
        r["rss_max"] = d["rss_max_kb"] / 1024
    return r

rows = []
def row(scenario, path, r, figure="", target="", ok=None, p50="p50", p99="p99"):
    f = lambda v, n=3: "" if v is None else f"{v:.{n}f}"
    if r is None:
        rows.append([scenario, path, "-", "-", "-", figure or "not measured", target, ""])
        return
    note = figure
    if r.get("errors"):
        note = (note + "; " if note else "") + f"{r['errors']} errors"
    verdict = "" if ok is None else ("PASS" if ok else "FAIL")
    if r.get("skewed"):
        path += " (*)"
    rows.append([scenario, path, f(r.get("rps"), 0), f(r.get(p50)), f(r.get(p99)), note, target, verdict])

dc1, dsat, dsat_lg = oha("direct.c1"), oha("direct.sat"), lg("direct.sat")
dttft, ds256 = lg("direct.ttft1"), lg("direct.s256")
row("c=1 latency (oha, closed loop)", "direct", dc1)
backends = [b for b in ("sqlite", "postgres") if load(b + ".meta.json")]
for b in backends:
    g = oha(b + ".c1")
    if g and dc1:
        a50, a99 = g["p50"] - dc1["p50"], g["p99"] - dc1["p99"]
        row("", f"gateway {b}", g, f"added p50 {a50:.3f}, p99 {a99:.3f} ms", "added p99 <= 1 ms", a99 <= 1.0)
    else:
        row("", f"gateway {b}", g)
row(f"saturation, 1 tenant (oha c={conc})", "direct", dsat)
px = oha("proxy.sat")
row("", "bare proxy (no parsing, auth or database)", px,
    f"{px['rps'] / dsat['rps']:.2f}x direct" if px and dsat else "")
for b in backends:
    g = oha(b + ".sat1")
    row("", f"gateway {b}", g, f"{g['rps'] / dsat['rps']:.2f}x direct" if g and dsat else "")
row(f"saturation (loadgen c={conc})", "direct", dsat_lg)
pxl = lg("proxy.sat")
row("", "bare proxy (no parsing, auth or database)", pxl,
    f"{pxl['rps'] / dsat_lg['rps']:.2f}x direct" if pxl and dsat_lg else "")
for b in backends:
    g1, gn, hot = lg(b + ".sat1"), lg(b + ".sat1000"), lg(b + ".hot1000")
    row("", f"gateway {b}, 1 tenant", g1,
        f"{g1['rps'] / dsat_lg['rps']:.2f}x direct" if g1 and dsat_lg else "")
    if gn and dsat_lg:
        x = gn["rps"] / dsat_lg["rps"]
        row("", f"gateway {b}, {tenants} tenants", gn, f"{x:.2f}x direct", ">= 0.5x direct", x >= 0.5)
    else:
        row("", f"gateway {b}, {tenants} tenants", gn)
    if hot and gn:
        x = hot["rps"] / gn["rps"]
        row("", f"gateway {b}, 1 hot tenant of {tenants}", hot, f"{x:.2f}x {tenants} tenants",
            f">= 0.8x {tenants} tenants", x >= 0.8)
    else:
        row("", f"gateway {b}, 1 hot tenant of {tenants}", hot)
for b in backends:
    d, g = oha(b + ".direct.half"), oha(b + ".half")
    dl, gl = lg(b + ".direct.half"), lg(b + ".half")
    rate = (dl or gl or {}).get("raw", {}).get("rate")
    label = f"delay20 at half saturation ({rate:.0f}/s), {b}" if rate else f"delay20 at half saturation, {b}"
    row(label + " (oha -q, corrected)", "direct", d)
    if d and g:
        x = g["p99"] / d["p99"]
        row("", f"gateway {b}", g, f"p99 {x:.3f}x direct", "p99 <= 1.10x direct", x <= 1.10)
    else:
        row("", f"gateway {b}", g)
    row("  same, loadgen open loop", "direct", dl)
    row("", f"gateway {b}", gl, f"p99 {gl['p99'] / dl['p99']:.3f}x direct" if dl and gl else "")
row("stream TTFT, c=1 (zero mock)", "direct", dttft, p50="ttft50", p99="ttft99")
for b in backends:
    g = lg(b + ".ttft1")
    if g and dttft:
        a50, a99 = g["ttft50"] - dttft["ttft50"], g["ttft99"] - dttft["ttft99"]
        row("", f"gateway {b}", g, f"TTFT added p50 {a50:.3f}, p99 {a99:.3f} ms; {g['bad']} bad streams",
            "added TTFT p99 <= 0.5 ms", a99 <= 0.5 and g["bad"] == 0, p50="ttft50", p99="ttft99")
    else:
        row("", f"gateway {b}", g, p50="ttft50", p99="ttft99")
row(f"{streams} concurrent streams (sse mock, {chunks} chunks 20 ms apart), TTFT", "direct", ds256,
    f"{ds256['bad']} bad of {ds256['raw']['ok']}" if ds256 else "", p50="ttft50", p99="ttft99")
for b in backends:
    g = lg(b + ".s256")
    if g and ds256:
        a99 = g["ttft99"] - ds256["ttft99"]
        row("", f"gateway {b}", g,
            f"TTFT added p50 {g['ttft50'] - ds256['ttft50']:.3f}, p99 {a99:.3f} ms; {g['bad']} bad of {g['raw']['ok']} streams, {g['frames']} frames",
            "added TTFT p99 <= 0.5 ms, 0 bad", a99 <= 0.5 and g["bad"] == 0 and g["errors"] == 0,
            p50="ttft50", p99="ttft99")
    else:
        row("", f"gateway {b}", g, p50="ttft50", p99="ttft99")
for b in backends:
    g = lg(b + ".inflight")
    if g and "rss_max" in g:
        row(f"{inflight} in flight (delay20 mock, {tenants} keys)", f"gateway {b}", g,
            f"RSS peak {g['rss_max']:.1f} MB", "RSS <= 100 MB", g["rss_max"] <= 100)
    else:
        row(f"{inflight} in flight (delay20 mock, {tenants} keys)", f"gateway {b}", g)
for b in backends:
    m = load(b + ".meta.json")
    mb = lambda k: m[k] / 1024
    fig = f"fresh {mb('rss_fresh_kb'):.1f}, 1 tenant set up {mb('rss_idle_1_kb'):.1f}"
    if m["rss_after_load1_kb"]:
        fig += f", after the 1-tenant load {mb('rss_after_load1_kb'):.1f}"
    fig += f", {m['tenants']} tenants set up {mb('rss_idle_n_kb'):.1f}"
    if m["rss_after_load_kb"]:
        fig += f", after all the load {mb('rss_after_load_kb'):.1f} (VmHWM {mb('vmhwm_kb'):.1f})"
    fig += f"; restarted with {m['tenants']} tenants {mb('rss_restart_kb'):.1f}"
    if m["rss_restart_warm_kb"]:
        fig += f", then 1 request per tenant {mb('rss_restart_warm_kb'):.1f}"
    fig += f" MB; setup 1 tenant {m['setup_1_s']} s, {m['tenants'] - 1} more {m['setup_rest_s']} s"
    idle = [m[k] for k in ("rss_fresh_kb", "rss_idle_1_kb", "rss_restart_kb", "rss_restart_warm_kb")]
    worst = max(idle) / 1024
    rows.append(["server RSS idle", f"{b}", "", "", "", fig, "idle <= 30 MB (fresh, 1 tenant, restarted)",
                 "PASS" if worst <= 30 else "FAIL"])
    u = load(b + ".usage.json")
    if u:
        ok = u["messages_used"] == m["upstream_calls"] and u["messages_reserved"] == 0 and u["tokens_reserved"] == 0
        rows.append(["settlement", b, "", "", "",
                     f"messages used {u['messages_used']} vs upstream calls {m['upstream_calls']}; "
                     f"reserved {u['messages_reserved']} msgs, {u['tokens_reserved']} tokens; "
                     f"tokens used {u['tokens_used']}",
                     "used = calls, reserved 0", "PASS" if ok else "CHECK"])
    if not m["landed"]:
        rows.append(["gateway", b, "", "", "", "POST /v1/chat/completions not served: gateway rows not measured", "", ""])

cpu = ""
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
print(f"Gateway load: {os.cpu_count()} cores ({cpu}), {dur} s per run, latencies in ms\n")
if busy:
    names = sorted({n.split(":")[0] for b in busy if len(b) > 2 for n in b[2].split(",")})
    print(f"WARNING: other processes ({', '.join(names[:8])}) used more than 0.2 core during {len(busy)} 2-s "
          f"samples ({busy[0][1]}..{busy[-1][1]}, see busy.log); runs they overlapped are marked (*): "
          f"their figures are skewed\n")
head = ["scenario", "path", "req/s", "p50", "p99", "figure", "target", ""]
print("| " + " | ".join(head) + " |")
print("|" + "|".join("---" for _ in head) + "|")
for r in rows:
    print("| " + " | ".join(r) + " |")
PY
note "raw results: $OUT; total $(($(date +%s) - START_TS)) s"
