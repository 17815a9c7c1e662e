#!/usr/bin/env bash
# pgbench -S through nothing, PgBouncer and pgveil, interleaved.
#
# Starts its own throwaway PostgreSQL cluster, PgBouncer (session pool mode)
# and pgveil on free loopback ports, runs `pgbench -S -c 8 -j 2` in each
# query mode (simple, extended, prepared) against the three targets, and
# prints the median tps of the rounds and the ratios between targets, and
# the CPU time each proxy process spent per transaction (from /proc; this one
# is less sensitive than tps to other work on the machine).
# Everything it starts is stopped, and its temp dir removed, when it exits.
#
# Usage (from anywhere):  bench/pgbench.sh
#
# Environment:
#   DURATION    seconds per pgbench run                  (default 10)
#   ROUNDS      rounds; each runs every mode x target    (default 3)
#   CLIENTS     pgbench -c                               (default 8)
#   THREADS     pgbench -j                               (default 2)
#   SCALE       pgbench -i -s                            (default 5)
#   WARMUP      seconds of unmeasured warm-up per target (default 2; 0 = none)
#   MODES       query modes to run           (default "simple extended prepared")
#   PG_BIN      PostgreSQL server binaries   (default /usr/lib/postgresql/15/bin)
#   PGBOUNCER   pgbouncer binary             (default: from PATH or /usr/sbin)
#   PGVEIL_BIN  pgveil binary   (default target/release/pgveil, built if missing)
#   BUILD=1     run `cargo build --release` even if the binary exists
#   RESULTS     also write the raw per-run figures to this CSV file
#
# Authentication is `trust` on 127.0.0.1 everywhere: the benchmark measures
# the steady-state relay, not the handshake (pgbench connects once per client).

set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
SCALE=${SCALE:-5}
WARMUP=${WARMUP:-2}
MODES=${MODES:-"simple extended prepared"}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BUILD=${BUILD:-0}
RESULTS=${RESULTS:-}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

TARGETS=(direct pgbouncer pgveil)
DB=pgbench
DB_USER=postgres

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

# --- prerequisites ---------------------------------------------------------

[[ -x $PG_BIN/initdb && -x $PG_BIN/pg_ctl && -x $PG_BIN/postgres ]] ||
    die "no PostgreSQL server binaries in $PG_BIN (set PG_BIN; Debian/Ubuntu: apt-get install -y postgresql-15)"
PGBENCH=$PG_BIN/pgbench
[[ -x $PGBENCH ]] || PGBENCH=$(command -v pgbench) || die "pgbench not found"
PSQL=$PG_BIN/psql
[[ -x $PSQL ]] || PSQL=$(command -v psql) || die "psql not found"

if [[ -z ${PGBOUNCER:-} ]]; then
    PGBOUNCER=$(command -v pgbouncer || true)
    [[ -n $PGBOUNCER ]] || { [[ -x /usr/sbin/pgbouncer ]] && PGBOUNCER=/usr/sbin/pgbouncer; } ||
        die "pgbouncer not found; install it with: apt-get install -y pgbouncer (or set PGBOUNCER)"
fi
[[ -x $PGBOUNCER ]] || die "pgbouncer binary $PGBOUNCER is not executable"

if [[ -n ${PGVEIL_BIN:-} ]]; then
    [[ -x $PGVEIL_BIN ]] || die "PGVEIL_BIN=$PGVEIL_BIN is not executable"
else
    PGVEIL_BIN=$REPO/target/release/pgveil
    if [[ $BUILD == 1 || ! -x $PGVEIL_BIN ]]; then
        log "building pgveil (cargo build --release)"
        (cd "$REPO" && cargo build --release --bin pgveil) || die "cargo build failed"
    fi
fi

# As root, PostgreSQL and PgBouncer run as this user (both refuse root).
if [[ $(id -u) == 0 ]]; then
    RUN_USER=${RUN_USER:-postgres}
    id "$RUN_USER" >/dev/null 2>&1 || die "user $RUN_USER does not exist (PostgreSQL refuses to run as root)"
    as_user() { runuser -u "$RUN_USER" -- "$@"; }
else
    as_user() { "$@"; }
fi

# --- cleanup ----------------------------------------------------------------

WORK=""
PG_STARTED=0
PGVEIL_PID=""
PGBENCH_PID=""

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ -n $PGBENCH_PID ]]; then
        kill -TERM "$PGBENCH_PID" 2>/dev/null
        wait "$PGBENCH_PID" 2>/dev/null
    fi
    if [[ -n $PGVEIL_PID ]] && kill -0 "$PGVEIL_PID" 2>/dev/null; then
        kill -TERM "$PGVEIL_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$PGVEIL_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PGVEIL_PID" 2>/dev/null
        wait "$PGVEIL_PID" 2>/dev/null
    fi
    if [[ -n $WORK && -s $WORK/pgbouncer.pid ]]; then
        local bpid
        bpid=$(cat "$WORK/pgbouncer.pid")
        kill -TERM "$bpid" 2>/dev/null   # SIGTERM: immediate shutdown
        for _ in $(seq 50); do kill -0 "$bpid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$bpid" 2>/dev/null
    fi
    if [[ $PG_STARTED == 1 ]]; then
        as_user "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate -w stop >/dev/null 2>&1
    fi
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $rc != 0 ]]; then
            for f in postgres.log pgbouncer.log pgveil.log; do
                [[ -s $WORK/$f ]] && { echo "--- tail of $f" >&2; tail -n 20 "$WORK/$f" >&2; }
            done
        fi
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pgveil-bench.XXXXXX")
chmod 755 "$WORK"
if [[ $(id -u) == 0 ]]; then chown "$RUN_USER" "$WORK"; fi

# --- helpers -----------------------------------------------------------------

USED_PORTS=" "
# free_port VAR: a free loopback port, distinct from those already handed out.
free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 40000))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if command -v ss >/dev/null; then
            [[ -z $(ss -Htan "( sport = :$p )" 2>/dev/null) ]] || continue
        elif (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            continue
        fi
        USED_PORTS+="$p "
        printf -v "$1" '%s' "$p"
        return
    done
    die "no free port found"
}

# wait_ready NAME PORT: until `select 1` works through that port.
wait_ready() {
    for _ in $(seq 100); do
        if "$PSQL" -X -q -h 127.0.0.1 -p "$2" -U "$DB_USER" -d "$DB" -tAc 'select 1' >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    die "$1 on port $2 did not become ready"
}

# --- PostgreSQL ----------------------------------------------------------------

free_port PG_PORT
free_port BOUNCER_PORT
free_port PGVEIL_PORT

PG_VERSION=$("$PG_BIN/postgres" --version | awk '{print $3}')
BOUNCER_VERSION=$("$PGBOUNCER" --version | head -n1 | awk '{print $2}')
PGVEIL_VERSION=$("$PGVEIL_BIN" --version | awk '{print $2}')
PGVEIL_REV="binary of $(date -r "$PGVEIL_BIN" '+%F %T'), repo at $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown)"
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n1)
NCPU=$(nproc)
read -r LOAD1 _ </proc/loadavg || LOAD1=0
if awk -v l="$LOAD1" -v n="$NCPU" 'BEGIN { exit !(l > n / 2) }'; then
    log "warning: load average is $LOAD1 on $NCPU CPUs: other work will skew the figures"
fi
log "PostgreSQL $PG_VERSION on port $PG_PORT (work dir $WORK)"
as_user "$PG_BIN/initdb" -D "$WORK/data" -U "$DB_USER" -A trust --no-sync -E UTF8 >"$WORK/initdb.log" 2>&1 ||
    { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
as_user "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/postgres.log" -w -t 60 \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$WORK -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100 -c shared_buffers=128MB" \
    start >/dev/null || die "PostgreSQL did not start"
PG_STARTED=1
"$PSQL" -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -d postgres -c "create database $DB" >/dev/null
log "pgbench -i -s $SCALE"
"$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" "$DB" >"$WORK/init.log" 2>&1 ||
    { cat "$WORK/init.log" >&2; die "pgbench -i failed"; }

# --- PgBouncer (session pooling) -------------------------------------------------

echo "\"$DB_USER\" \"\"" >"$WORK/userlist.txt"
cat >"$WORK/pgbouncer.ini" <<EOF
[databases]
$DB = host=127.0.0.1 port=$PG_PORT dbname=$DB

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $WORK/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = $((CLIENTS + 4))
ignore_startup_parameters = extra_float_digits
logfile = $WORK/pgbouncer.log
pidfile = $WORK/pgbouncer.pid
log_connections = 0
log_disconnections = 0
EOF
if [[ $(id -u) == 0 ]]; then chown "$RUN_USER" "$WORK"/userlist.txt "$WORK"/pgbouncer.ini; fi
log "PgBouncer $BOUNCER_VERSION on port $BOUNCER_PORT (session pool mode)"
as_user "$PGBOUNCER" -d -q "$WORK/pgbouncer.ini" || die "pgbouncer did not start"
wait_ready pgbouncer "$BOUNCER_PORT"

# --- pgveil --------------------------------------------------------------------------

cat >"$WORK/pgveil.toml" <<EOF
[listen]
address = "127.0.0.1:$PGVEIL_PORT"

[upstream]
address = "127.0.0.1:$PG_PORT"

[log]
level = "warn"
EOF
log "pgveil $PGVEIL_VERSION ($PGVEIL_REV) $PGVEIL_BIN on port $PGVEIL_PORT"
"$PGVEIL_BIN" run --config "$WORK/pgveil.toml" >"$WORK/pgveil.log" 2>&1 &
PGVEIL_PID=$!
wait_ready pgveil "$PGVEIL_PORT"
kill -0 "$PGVEIL_PID" 2>/dev/null || die "pgveil exited"

# --- the runs ------------------------------------------------------------------------

BOUNCER_PID=$(cat "$WORK/pgbouncer.pid")
CLK_TCK=$(getconf CLK_TCK)

port_of() {
    case $1 in
        direct) echo "$PG_PORT" ;;
        pgbouncer) echo "$BOUNCER_PORT" ;;
        pgveil) echo "$PGVEIL_PORT" ;;
    esac
}

pid_of() {
    case $1 in
        pgbouncer) echo "$BOUNCER_PID" ;;
        pgveil) echo "$PGVEIL_PID" ;;
        *) echo "" ;;
    esac
}

# CPU time (user + system, all threads) a process has used, in clock ticks.
cpu_ticks() {
    if [[ -n $1 && -r /proc/$1/stat ]]; then
        sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
    else
        echo 0
    fi
}

# run_pgbench TARGET MODE SECONDS: sets RUN_TPS, and RUN_CPU_US (the proxy's
# CPU time per transaction in microseconds; empty for direct).
run_pgbench() {
    local out="$WORK/run.log" pid before after txns
    pid=$(pid_of "$1")
    before=$(cpu_ticks "$pid")
    # In the background, so that a signal to this script is handled at once.
    "$PGBENCH" -n -S -M "$2" -c "$CLIENTS" -j "$THREADS" -T "$3" \
        -h 127.0.0.1 -p "$(port_of "$1")" -U "$DB_USER" "$DB" >"$out" 2>&1 &
    PGBENCH_PID=$!
    if ! wait "$PGBENCH_PID"; then
        PGBENCH_PID=""
        cat "$out" >&2
        die "pgbench failed against $1 (-M $2)"
    fi
    PGBENCH_PID=""
    after=$(cpu_ticks "$pid")
    RUN_TPS=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$out" | tail -n1)
    txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")
    if [[ -z $RUN_TPS || -z $txns || $txns == 0 ]]; then
        cat "$out" >&2
        die "no transactions in pgbench output ($1, -M $2)"
    fi
    if grep -q 'number of failed transactions: [1-9]' "$out"; then
        cat "$out" >&2
        die "failed transactions against $1 (-M $2)"
    fi
    RUN_CPU_US=""
    if [[ -n $pid ]]; then
        RUN_CPU_US=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$txns" 'BEGIN { printf "%.1f", t / hz / n * 1e6 }')
    fi
}

if ((WARMUP > 0)); then
    log "warm-up: ${WARMUP}s per target"
    for t in "${TARGETS[@]}"; do run_pgbench "$t" prepared "$WARMUP"; done
fi

declare -A TPS CPU   # "target mode" -> space-separated figures, one per round
if [[ -n $RESULTS ]]; then echo "round,mode,target,tps,proxy_cpu_us_per_txn,load1" >"$RESULTS"; fi
runs=$((ROUNDS * $(wc -w <<<"$MODES") * ${#TARGETS[@]}))
log "$runs runs of ${DURATION}s: $ROUNDS rounds x modes ($MODES) x targets (${TARGETS[*]}), -c $CLIENTS -j $THREADS"
for ((r = 1; r <= ROUNDS; r++)); do
    for mode in $MODES; do
        # Rotate which target goes first, so no target always follows another.
        for ((i = 0; i < ${#TARGETS[@]}; i++)); do
            t=${TARGETS[$(((i + r - 1) % ${#TARGETS[@]}))]}
            run_pgbench "$t" "$mode" "$DURATION"
            read -r load _ </proc/loadavg
            TPS["$t $mode"]+="$RUN_TPS "
            CPU["$t $mode"]+="$RUN_CPU_US "
            log "$(printf 'round %d/%d  -M %-8s  %-9s  %10.0f tps  proxy CPU %6s us/txn  load %s' \
                "$r" "$ROUNDS" "$mode" "$t" "$RUN_TPS" "${RUN_CPU_US:--}" "$load")"
            if [[ -n $RESULTS ]]; then echo "$r,$mode,$t,$RUN_TPS,$RUN_CPU_US,$load" >>"$RESULTS"; fi
        done
    done
done
kill -0 "$PGVEIL_PID" 2>/dev/null || die "pgveil exited during the runs"

median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }

read -r LOAD1_END _ </proc/loadavg || LOAD1_END=0
echo
echo "machine: $NCPU CPUs, ${CPU_MODEL:-unknown CPU}, $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM; load average $LOAD1 at start, $LOAD1_END at end"
echo "PostgreSQL $PG_VERSION (fsync=off), PgBouncer $BOUNCER_VERSION (session), pgveil $PGVEIL_VERSION ($PGVEIL_REV)"
echo "pgbench -S -c $CLIENTS -j $THREADS -T $DURATION, scale $SCALE, median of $ROUNDS rounds"
echo
echo "| mode     | direct tps | pgbouncer tps | pgveil tps | pgveil/direct | pgveil/pgbouncer | pgbouncer/direct | pgbouncer CPU us/txn | pgveil CPU us/txn |"
echo "|----------|-----------:|--------------:|-----------:|--------------:|-----------------:|-----------------:|---------------------:|------------------:|"
for mode in $MODES; do
    d=$(median <<<"${TPS["direct $mode"]}")
    b=$(median <<<"${TPS["pgbouncer $mode"]}")
    v=$(median <<<"${TPS["pgveil $mode"]}")
    bc=$(median <<<"${CPU["pgbouncer $mode"]}")
    vc=$(median <<<"${CPU["pgveil $mode"]}")
    awk -v m="$mode" -v d="$d" -v b="$b" -v v="$v" -v bc="$bc" -v vc="$vc" 'BEGIN {
        printf "| %-8s | %10.0f | %13.0f | %10.0f | %13.2f | %16.2f | %16.2f | %20.1f | %17.1f |\n",
            m, d, b, v, v/d, v/b, b/d, bc, vc }'
done
echo
echo "per round (tps; paired ratios compare runs a few seconds apart):"
for mode in $MODES; do
    for t in "${TARGETS[@]}"; do
        printf '  %-8s %-16s %s\n' "$mode" "$t" "$(awk '{for (i = 1; i <= NF; i++) printf "%8.0f", $i}' <<<"${TPS["$t $mode"]}")"
    done
    printf '  %-8s %-16s %s\n' "$mode" "pgveil/pgbouncer" "$(paste -d' ' <(tr ' ' '\n' <<<"${TPS["pgveil $mode"]}") <(tr ' ' '\n' <<<"${TPS["pgbouncer $mode"]}") |
        awk 'NF == 2 {printf "%8.2f", $1 / $2}')"
    printf '  %-8s %-16s %s\n' "$mode" "pgveil/direct" "$(paste -d' ' <(tr ' ' '\n' <<<"${TPS["pgveil $mode"]}") <(tr ' ' '\n' <<<"${TPS["direct $mode"]}") |
        awk 'NF == 2 {printf "%8.2f", $1 / $2}')"
done
