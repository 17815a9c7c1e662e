#!/usr/bin/env bash
# Encrypted CRM workload: pgbench custom scripts (-M prepared) through pgveil,
# on encrypted columns and on a plaintext copy of the schema (issue 5).
#
# Starts its own throwaway PostgreSQL cluster with two databases:
#   crm_enc    customers(id bigserial, name/email/phone/national_id bytea),
#              behind pgveil A, which encrypts those four columns;
#   crm_plain  the same columns as text, behind pgveil B, a plain relay (no
#              [keys], no [[encrypt]]).
# It loads ROWS customers into each (into crm_enc through pgveil A, so they
# are stored encrypted), then runs three pgbench custom-script workloads
# with `-M prepared`, interleaved, against A/crm_enc and B/crm_plain:
#   lookup  SELECT id, name, phone FROM customers WHERE email = :n
#   insert  INSERT INTO customers (name, email, phone, national_id)
#           VALUES (:n, :n, :n, :n)
#   mixed   lookup and insert, weights MIX (default 9:1)
# and prints the median tps of the rounds, the ratio encrypted/plaintext and
# the CPU time each pgveil process spent per transaction (from /proc).
# Afterwards it checks, through a direct connection, that crm_enc holds only
# ciphertext, and through pgveil A that lookups return the right rows.
#
# pgbench variables are integers, so a customer's email is the decimal text
# of its number ('42' for customer 42); the lookup binds it as a parameter.
#
# With SOAK=seconds it runs the soak test instead of the comparison: the
# mixed workload through pgveil A for that long at SOAK_CLIENTS clients
# (default 16, -j SOAK_THREADS = 2), with progress every 10 s, and fails on
# any failed transaction, error, aborted client or stalled interval.
#
# Everything it starts is stopped, and its temp dir removed, when it exits
# (also on Ctrl-C or an error; then the logs' tails are printed).
#
# Usage (from anywhere):  bench/crm.sh
#                         SOAK=60 bench/crm.sh
#
# Environment:
#   DURATION      seconds per pgbench run                       (default 10)
#   ROUNDS        rounds; each runs every script x target       (default 3)
#   CLIENTS       pgbench -c                                    (default 8)
#   THREADS       pgbench -j                                    (default 2)
#   ROWS          customers loaded into each database (<= 1000000, default 100000)
#   SCRIPTS       workloads to compare       (default "lookup insert mixed")
#   MIX           lookup:insert weights of the mixed workload   (default 9:1)
#   WARMUP        seconds of unmeasured warm-up per target      (default 2; 0 = none)
#   SOAK          seconds of soak test instead of the comparison (default 0 = off)
#   SOAK_CLIENTS  pgbench -c of the soak test                   (default 16)
#   SOAK_THREADS  pgbench -j of the soak test                   (default 2)
#   PG_BIN        PostgreSQL server binaries (default /usr/lib/postgresql/15/bin)
#   PGVEIL_BIN    pgveil binary   (default target/release/pgveil, built if missing)
#   BUILD=1       run `cargo build --release` even if the binary exists
#   RESULTS       also write the raw per-run figures to this CSV file
#
# Authentication is `trust` on 127.0.0.1 everywhere: the benchmark measures
# the steady state, not the handshake (pgbench connects once per client).

set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
ROWS=${ROWS:-100000}
SCRIPTS=${SCRIPTS:-"lookup insert mixed"}
MIX=${MIX:-9:1}
WARMUP=${WARMUP:-2}
SOAK=${SOAK:-0}
SOAK_CLIENTS=${SOAK_CLIENTS:-16}
SOAK_THREADS=${SOAK_THREADS:-2}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BUILD=${BUILD:-0}
RESULTS=${RESULTS:-}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

TARGETS=(encrypted plaintext)
DB_USER=postgres
BATCH=1000            # rows per INSERT statement when loading
INSERT_MIN=1000001    # inserted customers' numbers: never a loaded one

log() { printf '[crm] %s\n' "$*" >&2; }
die() { printf '[crm] error: %s\n' "$*" >&2; exit 1; }

# --- prerequisites ---------------------------------------------------------

if ! [[ $ROWS =~ ^[0-9]+$ ]] || ((ROWS < 1 || ROWS >= INSERT_MIN)); then
    die "ROWS must be 1..$((INSERT_MIN - 1))"
fi
[[ $MIX =~ ^[0-9]+:[0-9]+$ ]] || die "MIX must be lookup:insert weights, e.g. 9:1"
[[ $SOAK =~ ^[0-9]+$ ]] || die "SOAK must be a number of seconds"
for s in $SCRIPTS; do
    [[ $s == lookup || $s == insert || $s == mixed ]] || die "unknown script '$s' in SCRIPTS (lookup insert mixed)"
done

[[ -x $PG_BIN/initdb && -x $PG_BIN/pg_ctl && -x $PG_BIN/postgres ]] ||
    die "no PostgreSQL server binaries in $PG_BIN (set PG_BIN; Debian/Ubuntu: apt-get install -y postgresql-15)"
PGBENCH=$PG_BIN/pgbench
[[ -x $PGBENCH ]] || PGBENCH=$(command -v pgbench) || die "pgbench not found"
PSQL=$PG_BIN/psql
[[ -x $PSQL ]] || PSQL=$(command -v psql) || die "psql not found"

if [[ -n ${PGVEIL_BIN:-} ]]; then
    [[ -x $PGVEIL_BIN ]] || die "PGVEIL_BIN=$PGVEIL_BIN is not executable"
else
    PGVEIL_BIN=$REPO/target/release/pgveil
    if [[ $BUILD == 1 || ! -x $PGVEIL_BIN ]]; then
        log "building pgveil (cargo build --release)"
        (cd "$REPO" && cargo build --release --bin pgveil) || die "cargo build failed"
    fi
fi

# As root, PostgreSQL runs as this user (it refuses root).
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
PGVEIL_A_PID=""
PGVEIL_B_PID=""
PGBENCH_PID=""

stop_pid() {
    local pid=$1
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ -n $PGBENCH_PID ]]; then
        kill -TERM "$PGBENCH_PID" 2>/dev/null
        wait "$PGBENCH_PID" 2>/dev/null
    fi
    stop_pid "$PGVEIL_A_PID"
    stop_pid "$PGVEIL_B_PID"
    if [[ $PG_STARTED == 1 ]]; then
        as_user "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate -w stop >/dev/null 2>&1
    fi
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $rc != 0 ]]; then
            for f in postgres.log pgveil-a.log pgveil-b.log; do
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

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pgveil-crm.XXXXXX")
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

# sql PORT DB [psql args...]: psql, unaligned tuples only, stop on error.
sql() {
    local port=$1 db=$2
    shift 2
    "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$DB_USER" -d "$db" -tA "$@"
}

# wait_ready NAME PORT DB: until `select 1` works through that port.
wait_ready() {
    for _ in $(seq 100); do
        if sql "$2" "$3" -c 'select 1' >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    die "$1 on port $2 did not become ready"
}

# --- PostgreSQL ----------------------------------------------------------------

free_port PG_PORT
free_port PGVEIL_A_PORT
free_port PGVEIL_B_PORT

PG_VERSION=$("$PG_BIN/postgres" --version | awk '{print $3}')
PGBENCH_VERSION=$("$PGBENCH" --version | awk '{print $3}')
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

# The schema is created directly (pgveil learns it from the catalog when a
# client connects). Same columns in both; bytea holds pgveil's envelopes.
sql "$PG_PORT" postgres -c "create database crm_enc" -c "create database crm_plain" >/dev/null
sql "$PG_PORT" crm_enc >/dev/null <<'EOF'
CREATE TABLE customers (
    id          bigserial PRIMARY KEY,
    name        bytea,
    email       bytea,
    phone       bytea,
    national_id bytea
);
CREATE INDEX customers_email_idx ON customers (email);
EOF
sql "$PG_PORT" crm_plain >/dev/null <<'EOF'
CREATE TABLE customers (
    id          bigserial PRIMARY KEY,
    name        text,
    email       text,
    phone       text,
    national_id text
);
CREATE INDEX customers_email_idx ON customers (email);
EOF

# --- pgveil A (encrypting) and B (plain relay) -------------------------------------

KEYGEN=$("$PGVEIL_BIN" keygen --config /dev/null 2>/dev/null) || die "pgveil keygen failed"
KEY=$(sed -n 1p <<<"$KEYGEN")
CHECK_LINE=$(sed -n 2p <<<"$KEYGEN")
[[ -n $KEY && $CHECK_LINE == check\ =* ]] || die "unexpected output of pgveil keygen"
(umask 077 && printf '%s\n' "$KEY" >"$WORK/master.key")
chmod 600 "$WORK/master.key"

cat >"$WORK/pgveil-a.toml" <<EOF
[listen]
address = "127.0.0.1:$PGVEIL_A_PORT"

[upstream]
address = "127.0.0.1:$PG_PORT"

[keys]
master_key_file = "$WORK/master.key"
$CHECK_LINE

[log]
level = "warn"

[[encrypt]]
table = "customers"
column = "name"
type = "text"

[[encrypt]]
table = "customers"
column = "email"
type = "text"
domain = "email"

[[encrypt]]
table = "customers"
column = "phone"
type = "text"

[[encrypt]]
table = "customers"
column = "national_id"
type = "text"
EOF
cat >"$WORK/pgveil-b.toml" <<EOF
[listen]
address = "127.0.0.1:$PGVEIL_B_PORT"

[upstream]
address = "127.0.0.1:$PG_PORT"

[log]
level = "warn"
EOF
"$PGVEIL_BIN" check --config "$WORK/pgveil-a.toml" >"$WORK/check.log" 2>&1 ||
    { cat "$WORK/check.log" >&2; die "pgveil check refused the configuration of pgveil A"; }

log "pgveil $PGVEIL_VERSION ($PGVEIL_REV) $PGVEIL_BIN"
log "pgveil A (4 encrypted columns) on port $PGVEIL_A_PORT, pgveil B (plain relay) on port $PGVEIL_B_PORT"
"$PGVEIL_BIN" run --config "$WORK/pgveil-a.toml" >"$WORK/pgveil-a.log" 2>&1 &
PGVEIL_A_PID=$!
"$PGVEIL_BIN" run --config "$WORK/pgveil-b.toml" >"$WORK/pgveil-b.log" 2>&1 &
PGVEIL_B_PID=$!
wait_ready "pgveil A" "$PGVEIL_A_PORT" crm_enc
wait_ready "pgveil B" "$PGVEIL_B_PORT" crm_plain
kill -0 "$PGVEIL_A_PID" 2>/dev/null || die "pgveil A exited"
kill -0 "$PGVEIL_B_PID" 2>/dev/null || die "pgveil B exited"

# --- data ----------------------------------------------------------------------------

# Customer i: name 'Customer i', email 'i', phone '+1-555-iiiiiii',
# national_id 'NID-iiiiiiiii'; multi-row INSERTs of literals (pgveil
# encrypts literals in the simple protocol; it refuses expressions on
# encrypted columns, so the text is generated here).
awk -v rows="$ROWS" -v batch="$BATCH" -v q="'" 'BEGIN {
    for (i = 1; i <= rows; i++) {
        if ((i - 1) % batch == 0) print "INSERT INTO customers (name, email, phone, national_id) VALUES"
        printf "(%sCustomer %d%s, %s%d%s, %s+1-555-%07d%s, %sNID-%09d%s)%s\n",
            q, i, q, q, i, q, q, i, q, q, i, q, (i % batch == 0 || i == rows) ? ";" : ","
    }
}' >"$WORK/load.sql"
log "loading $ROWS customers into crm_enc through pgveil A and into crm_plain through pgveil B"
start=$(date +%s.%N)
sql "$PGVEIL_A_PORT" crm_enc -f "$WORK/load.sql" >"$WORK/load-enc.log" 2>&1 ||
    { tail -n 20 "$WORK/load-enc.log" >&2; die "loading crm_enc through pgveil A failed"; }
mid=$(date +%s.%N)
sql "$PGVEIL_B_PORT" crm_plain -f "$WORK/load.sql" >"$WORK/load-plain.log" 2>&1 ||
    { tail -n 20 "$WORK/load-plain.log" >&2; die "loading crm_plain through pgveil B failed"; }
end=$(date +%s.%N)
log "$(awk -v a="$start" -v b="$mid" -v c="$end" 'BEGIN { printf "loaded in %.1f s (encrypted) and %.1f s (plaintext)", b - a, c - b }')"
for db in crm_enc crm_plain; do
    sql "$PG_PORT" "$db" -c "VACUUM ANALYZE customers" >/dev/null
done
n_enc=$(sql "$PG_PORT" crm_enc -c "select count(*) from customers")
n_plain=$(sql "$PG_PORT" crm_plain -c "select count(*) from customers")
[[ $n_enc == "$ROWS" && $n_plain == "$ROWS" ]] || die "expected $ROWS rows, found $n_enc (crm_enc) and $n_plain (crm_plain)"
size_sql="select pg_size_pretty(pg_total_relation_size('customers'))"
log "customers, table and indexes: crm_enc $(sql "$PG_PORT" crm_enc -c "$size_sql"), crm_plain $(sql "$PG_PORT" crm_plain -c "$size_sql")"

# --- pgbench scripts -------------------------------------------------------------------

cat >"$WORK/lookup.sql" <<'EOF'
\set n random(1, :rows)
SELECT id, name, phone FROM customers WHERE email = :n;
EOF
cat >"$WORK/insert.sql" <<EOF
\\set n random($INSERT_MIN, 2000000000)
INSERT INTO customers (name, email, phone, national_id) VALUES (:n, :n, :n, :n);
EOF
# Correctness check (run after the benchmark): customer n was loaded with
# id n and email 'n'; a missing row fails \gset, a wrong one divides by zero.
cat >"$WORK/verify.sql" <<'EOF'
\set n random(1, :rows)
SELECT id AS got_id, email AS got_email FROM customers WHERE email = :n \gset
\if :got_id != :n OR :got_email != :n
\set wrong_row 1 / 0
\endif
EOF

LOOKUP_W=${MIX%%:*}
INSERT_W=${MIX##*:}
script_args() {
    case $1 in
        lookup) echo "-f $WORK/lookup.sql" ;;
        insert) echo "-f $WORK/insert.sql" ;;
        mixed) echo "-f $WORK/lookup.sql@$LOOKUP_W -f $WORK/insert.sql@$INSERT_W" ;;
        verify) echo "-f $WORK/verify.sql" ;;
    esac
}
port_of() { case $1 in encrypted) echo "$PGVEIL_A_PORT" ;; plaintext) echo "$PGVEIL_B_PORT" ;; esac; }
db_of() { case $1 in encrypted) echo crm_enc ;; plaintext) echo crm_plain ;; esac; }
pid_of() { case $1 in encrypted) echo "$PGVEIL_A_PID" ;; plaintext) echo "$PGVEIL_B_PID" ;; esac; }

CLK_TCK=$(getconf CLK_TCK)

# CPU time (user + system, all threads) a process has used, in clock ticks.
cpu_ticks() {
    if [[ -n $1 && -r /proc/$1/stat ]]; then
        sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
    else
        echo 0
    fi
}

# run_pgbench TARGET SCRIPT CLIENTS THREADS [pgbench args...]: runs pgbench
# -M prepared and fails on any error, aborted client or failed transaction.
# Sets RUN_TPS, RUN_TXNS, RUN_CPU_US (pgveil's CPU time per transaction in
# microseconds) and RUN_OUT (the output file).
run_pgbench() {
    local target=$1 script=$2 clients=$3 threads=$4 pid before after
    shift 4
    RUN_OUT="$WORK/run-$target-$script.log"
    pid=$(pid_of "$target")
    before=$(cpu_ticks "$pid")
    # In the background, so that a signal to this script is handled at once.
    # shellcheck disable=SC2046
    "$PGBENCH" -n -M prepared -c "$clients" -j "$threads" "$@" -D rows="$ROWS" $(script_args "$script") \
        -h 127.0.0.1 -p "$(port_of "$target")" -U "$DB_USER" "$(db_of "$target")" >"$RUN_OUT" 2>&1 &
    PGBENCH_PID=$!
    if ! wait "$PGBENCH_PID"; then
        PGBENCH_PID=""
        cat "$RUN_OUT" >&2
        die "pgbench failed: $script against $target"
    fi
    PGBENCH_PID=""
    after=$(cpu_ticks "$pid")
    if grep -Eq 'ERROR|FATAL|error|abort' "$RUN_OUT"; then
        cat "$RUN_OUT" >&2
        die "errors in pgbench output: $script against $target"
    fi
    if grep -q 'number of failed transactions: [1-9]' "$RUN_OUT"; then
        cat "$RUN_OUT" >&2
        die "failed transactions: $script against $target"
    fi
    RUN_TPS=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$RUN_OUT" | tail -n1)
    RUN_TXNS=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$RUN_OUT")
    if [[ -z $RUN_TPS || -z $RUN_TXNS || $RUN_TXNS == 0 ]]; then
        cat "$RUN_OUT" >&2
        die "no transactions in pgbench output ($script against $target)"
    fi
    RUN_CPU_US=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$RUN_TXNS" 'BEGIN { printf "%.1f", t / hz / n * 1e6 }')
    kill -0 "$PGVEIL_A_PID" 2>/dev/null || die "pgveil A exited"
    kill -0 "$PGVEIL_B_PID" 2>/dev/null || die "pgveil B exited"
}

# pgveil_log_lines FILE: lines in a pgveil log; its level is warn, so each
# one is a warning or an error.
pgveil_log_lines() { grep -c . "$1" 2>/dev/null || true; }

median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }

print_machine() {
    read -r LOAD1_END _ </proc/loadavg || LOAD1_END=0
    echo "machine: $NCPU CPUs, ${CPU_MODEL:-unknown CPU}, $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM; load average $LOAD1 at start, $LOAD1_END at end"
    echo "PostgreSQL $PG_VERSION (fsync=off), pgbench $PGBENCH_VERSION, pgveil $PGVEIL_VERSION ($PGVEIL_REV)"
}

# --- the soak test (SOAK=seconds) -------------------------------------------------------

if ((SOAK > 0)); then
    log "soak: mixed workload ($MIX) through pgveil A for ${SOAK}s, -M prepared -c $SOAK_CLIENTS -j $SOAK_THREADS"
    log_before=$(pgveil_log_lines "$WORK/pgveil-a.log")
    run_pgbench encrypted mixed "$SOAK_CLIENTS" "$SOAK_THREADS" -T "$SOAK" -P 10
    grep '^progress:' "$RUN_OUT" >&2 || true
    # A stalled interval (a hang) shows as 0 tps in a progress line.
    if grep -Eq '^progress: .* 0\.0 tps' "$RUN_OUT"; then
        cat "$RUN_OUT" >&2
        die "soak: an interval with no transactions"
    fi
    log_after=$(pgveil_log_lines "$WORK/pgveil-a.log")
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$RUN_OUT")
    latency=$(sed -n 's/^latency average = \(.*\)$/\1/p' "$RUN_OUT")
    echo
    print_machine
    echo "soak: pgbench -n -M prepared -c $SOAK_CLIENTS -j $SOAK_THREADS -T $SOAK, mixed lookup@$LOOKUP_W insert@$INSERT_W, $ROWS customers, through pgveil A (encrypted)"
    printf 'tps %.0f, %d transactions, %s failed, latency average %s, pgveil CPU %s us/txn, pgveil log lines (warn and above) during the run: %d\n' \
        "$RUN_TPS" "$RUN_TXNS" "${failed:-?}" "$latency" "$RUN_CPU_US" $((log_after - log_before))
    sed -n '/^SQL script/,$p' "$RUN_OUT" | grep -E '^SQL script| transactions \(| - number of failed' || true
    if ((log_after > log_before)); then
        echo "pgveil A log during the soak:"
        tail -n +"$((log_before + 1))" "$WORK/pgveil-a.log" | head -n 20
    fi
    [[ $failed == 0 ]] || die "soak: $failed failed transactions"
fi

# --- the comparison --------------------------------------------------------------------

if ((SOAK == 0)); then
    if ((WARMUP > 0)); then
        log "warm-up: ${WARMUP}s per target (mixed)"
        for t in "${TARGETS[@]}"; do run_pgbench "$t" mixed "$CLIENTS" "$THREADS" -T "$WARMUP"; done
    fi

    declare -A TPS CPU   # "target script" -> space-separated figures, one per round
    if [[ -n $RESULTS ]]; then echo "round,script,target,tps,pgveil_cpu_us_per_txn,load1" >"$RESULTS"; fi
    runs=$((ROUNDS * $(wc -w <<<"$SCRIPTS") * ${#TARGETS[@]}))
    log "$runs runs of ${DURATION}s: $ROUNDS rounds x scripts ($SCRIPTS) x targets (${TARGETS[*]}), -M prepared -c $CLIENTS -j $THREADS"
    for ((r = 1; r <= ROUNDS; r++)); do
        for s in $SCRIPTS; do
            # Alternate which target goes first, so neither always follows the other.
            for ((i = 0; i < ${#TARGETS[@]}; i++)); do
                t=${TARGETS[$(((i + r - 1) % ${#TARGETS[@]}))]}
                run_pgbench "$t" "$s" "$CLIENTS" "$THREADS" -T "$DURATION"
                read -r load _ </proc/loadavg
                TPS["$t $s"]+="$RUN_TPS "
                CPU["$t $s"]+="$RUN_CPU_US "
                log "$(printf 'round %d/%d  %-6s  %-9s  %8.0f tps  pgveil CPU %6s us/txn  load %s' \
                    "$r" "$ROUNDS" "$s" "$t" "$RUN_TPS" "$RUN_CPU_US" "$load")"
                if [[ -n $RESULTS ]]; then echo "$r,$s,$t,$RUN_TPS,$RUN_CPU_US,$load" >>"$RESULTS"; fi
            done
        done
    done
fi

# --- verification -----------------------------------------------------------------------

log "verifying"
# 1. Directly: every stored value of the four columns is an envelope (format
#    byte 0x01, at least 19 bytes), none is NULL, and no plaintext email.
bad=$(sql "$PG_PORT" crm_enc -c "
    SELECT count(*) FROM customers
    WHERE name IS NULL OR email IS NULL OR phone IS NULL OR national_id IS NULL
       OR substr(name, 1, 1) <> '\\x01'::bytea OR octet_length(name) < 19
       OR substr(email, 1, 1) <> '\\x01'::bytea OR octet_length(email) < 19
       OR substr(phone, 1, 1) <> '\\x01'::bytea OR octet_length(phone) < 19
       OR substr(national_id, 1, 1) <> '\\x01'::bytea OR octet_length(national_id) < 19
       OR email = convert_to('1', 'UTF8') OR email = convert_to(id::text, 'UTF8')")
total_enc=$(sql "$PG_PORT" crm_enc -c "select count(*) from customers")
[[ $bad == 0 ]] || die "crm_enc: $bad of $total_enc rows hold something other than pgveil envelopes"
# 2. Through pgveil A (simple protocol): a loaded customer comes back whole.
k=$(((ROWS + 1) / 2))
want=$(printf '%d|Customer %d|%d|+1-555-%07d|NID-%09d' "$k" "$k" "$k" "$k" "$k")
got=$(sql "$PGVEIL_A_PORT" crm_enc -c "SELECT id, name, email, phone, national_id FROM customers WHERE email = '$k'")
[[ $got == "$want" ]] || die "lookup of email '$k' through pgveil A returned '$got', expected '$want'"
# 3. Through pgveil A, -M prepared: 2000 random lookups return the right row.
run_pgbench encrypted verify 2 1 -t 1000
# 4. Rows inserted by pgbench (all four columns bound to the same number)
#    read back through pgveil A with the four values equal.
inserted=$(sql "$PG_PORT" crm_enc -c "select count(*) from customers where id > $ROWS")
if ((inserted > 0)); then
    sql "$PGVEIL_A_PORT" crm_enc -F ' ' -c "SELECT name, email, phone, national_id FROM customers WHERE id > $ROWS ORDER BY id DESC LIMIT 1000" >"$WORK/inserted.txt"
    awk -v min="$INSERT_MIN" '!($1 == $2 && $2 == $3 && $3 == $4 && $1 ~ /^[0-9]+$/ && $1 + 0 >= min) { bad++ } END { exit bad > 0 || NR == 0 }' "$WORK/inserted.txt" ||
        { head -n 5 "$WORK/inserted.txt" >&2; die "rows inserted through pgveil A do not read back as inserted"; }
fi
log "crm_enc: all $total_enc rows hold only envelopes; lookups through pgveil A (simple and prepared) return the right rows; the latest $((inserted < 1000 ? inserted : 1000)) of $inserted rows inserted by pgbench read back intact"
warn_a=$(pgveil_log_lines "$WORK/pgveil-a.log")
warn_b=$(pgveil_log_lines "$WORK/pgveil-b.log")
if ((warn_a + warn_b > 0)); then
    log "pgveil log lines at warn or above: A $warn_a, B $warn_b; first ones:"
    head -n 5 "$WORK/pgveil-a.log" "$WORK/pgveil-b.log" >&2
fi

((SOAK > 0)) && exit 0

# --- report ---------------------------------------------------------------------------

echo
print_machine
echo "pgbench -n -M prepared -c $CLIENTS -j $THREADS -T $DURATION, custom scripts, $ROWS customers loaded, median of $ROUNDS rounds"
echo "encrypted = pgveil A, crm_enc (4 bytea columns encrypted); plaintext = pgveil B (plain relay), crm_plain (text)"
echo
# paired_ratios SCRIPT: encrypted/plaintext of each round, space-separated.
paired_ratios() {
    paste -d' ' <(tr ' ' '\n' <<<"${TPS["encrypted $1"]}") <(tr ' ' '\n' <<<"${TPS["plaintext $1"]}") |
        awk 'NF == 2 {printf "%.4f ", $1 / $2}'
}
echo "| script    | encrypted tps | plaintext tps | encrypted/plaintext | median of paired ratios | encrypted pgveil CPU us/txn | plaintext pgveil CPU us/txn |"
echo "|-----------|--------------:|--------------:|--------------------:|------------------------:|----------------------------:|----------------------------:|"
for s in $SCRIPTS; do
    e=$(median <<<"${TPS["encrypted $s"]}")
    p=$(median <<<"${TPS["plaintext $s"]}")
    pr=$(median <<<"$(paired_ratios "$s")")
    ec=$(median <<<"${CPU["encrypted $s"]}")
    pc=$(median <<<"${CPU["plaintext $s"]}")
    label=$s
    [[ $s == mixed ]] && label="mixed $MIX"
    awk -v s="$label" -v e="$e" -v p="$p" -v pr="$pr" -v ec="$ec" -v pc="$pc" 'BEGIN {
        printf "| %-9s | %13.0f | %13.0f | %19.2f | %23.2f | %27.1f | %27.1f |\n", s, e, p, e/p, pr, ec, pc }'
done
echo
echo "per round (tps; paired ratios compare runs a few seconds apart):"
for s in $SCRIPTS; do
    for t in "${TARGETS[@]}"; do
        printf '  %-6s %-20s %s\n' "$s" "$t" "$(awk '{for (i = 1; i <= NF; i++) printf "%8.0f", $i}' <<<"${TPS["$t $s"]}")"
    done
    printf '  %-6s %-20s %s\n' "$s" "encrypted/plaintext" "$(awk '{for (i = 1; i <= NF; i++) printf "%8.2f", $i}' <<<"$(paired_ratios "$s")")"
    for t in "${TARGETS[@]}"; do
        printf '  %-6s %-20s %s\n' "$s" "$t CPU us/txn" "$(awk '{for (i = 1; i <= NF; i++) printf "%8.1f", $i}' <<<"${CPU["$t $s"]}")"
    done
done
