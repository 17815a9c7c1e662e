#!/usr/bin/env bash
# COPY FROM STDIN throughput: a CSV of CRM rows loaded through pgveil into a
# table with four encrypted columns, against the same load of a plaintext
# table directly into PostgreSQL (issue 9).
#
# Starts its own throwaway PostgreSQL cluster with two databases:
#   crm_enc    customers(id bigint, name/email/phone/national_id bytea,
#              country text), behind pgveil A, which encrypts the four
#              bytea columns (STORAGE=text: text columns holding pgveil's
#              "pgv:" + base64 form instead);
#   crm_plain  the same columns as text, loaded directly (and, for the
#              "relay" target, through pgveil B: a plain relay with no
#              [keys] and no [[encrypt]]).
# Neither table has an index (INDEX=1 adds the same non-unique index on
# email to both).
#
# It generates a CSV of ROWS customers (id, name, email, phone, national_id,
# country; some fields need CSV quoting, some are non-ASCII, a few are NULL
# or empty strings), loads it once through pgveil A and once directly
# (warm-up, not timed), saves what pgveil A stored as a second CSV (the
# ciphertext, read directly), then, in ROUNDS interleaved rounds, times
#   psql -c "\copy customers from 'customers.csv' with (format csv)"
# against each target:
#   encrypted  pgveil A -> crm_enc (the CSV, encrypted by pgveil)
#   direct     PostgreSQL -> crm_plain (the CSV, plaintext)
#   relay      pgveil B (plain relay) -> crm_plain (the CSV)
#   cipher     PostgreSQL -> crm_enc (the ciphertext CSV: what the encrypted
#              load costs PostgreSQL alone, without pgveil)
# with TRUNCATE and CHECKPOINT before every load. It prints the median
# rows/s per target, the ratio encrypted/direct (the issue's figure), the CPU
# time each pgveil used per row (from /proc/PID/stat) and pgveil A's peak
# RSS (VmHWM).
# With COPY_TO=1 (default) it also times
#   psql -c "\copy customers to '/dev/null' with (format csv)"
# against the same targets.
#
# Afterwards it verifies: count(*) = ROWS in both databases; directly, every
# non-NULL value of the four columns in crm_enc is a pgveil envelope (first
# byte 0x01), so no plaintext email is stored; through pgveil A, the whole
# table read back with COPY TO is byte-identical to the direct COPY TO of
# crm_plain, which is byte-identical to the generated CSV; and a lookup by
# email through pgveil A finds a COPY-loaded row.
#
# Everything it starts is stopped, and its temp dir removed, when it exits
# (also on Ctrl-C or an error; then the logs' tails are printed).
#
# Usage (from anywhere):  bench/copy.sh
#                         ROWS=20000 ROUNDS=1 bench/copy.sh     # smoke run
#
# Environment:
#   ROWS        CSV rows loaded per run                      (default 1000000)
#   ROUNDS      rounds; each loads once per target           (default 3)
#   TARGETS     targets to time   (default "encrypted direct relay cipher";
#               encrypted and direct are required)
#   INDEX=1     a non-unique index on email in both tables   (default 0: none)
#   STORAGE     type of crm_enc's encrypted columns: bytea or text
#                                                            (default bytea)
#   COPY_TO=0   skip the COPY TO timings                     (default 1)
#   TIMEOUT     seconds one psql \copy may take before the
#               script gives up on it (a hang)               (default 900)
#   PG_BIN      PostgreSQL server binaries (default /usr/lib/postgresql/15/bin)
#   PGVEIL_BIN  pgveil binary   (default target/release/pgveil, built if missing)
#   BUILD=1     run `cargo build --release` even if the binary exists
#   RESULTS     also write the raw per-run figures to this CSV file
#
# Authentication is `trust` on 127.0.0.1 everywhere. Each \copy is one psql
# process: one connection, one COPY statement, then the data stream.

set -euo pipefail

ROWS=${ROWS:-1000000}
ROUNDS=${ROUNDS:-3}
TARGETS_STR=${TARGETS:-"encrypted direct relay cipher"}
INDEX=${INDEX:-0}
STORAGE=${STORAGE:-bytea}
COPY_TO=${COPY_TO:-1}
TIMEOUT=${TIMEOUT:-900}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BUILD=${BUILD:-0}
RESULTS=${RESULTS:-}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

DB_USER=postgres

log() { printf '[copy] %s\n' "$*" >&2; }
die() { printf '[copy] error: %s\n' "$*" >&2; exit 1; }

# --- prerequisites ---------------------------------------------------------

[[ $ROWS =~ ^[1-9][0-9]*$ ]] || die "ROWS must be a positive number"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive number"
[[ $STORAGE == bytea || $STORAGE == text ]] || die "STORAGE must be bytea or text"
[[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "TIMEOUT must be a number of seconds"
read -r -a TARGETS <<<"$TARGETS_STR"
for t in "${TARGETS[@]}"; do
    [[ $t == encrypted || $t == direct || $t == relay || $t == cipher ]] ||
        die "unknown target '$t' in TARGETS (encrypted direct relay cipher)"
done
[[ " ${TARGETS[*]} " == *" encrypted "* && " ${TARGETS[*]} " == *" direct "* ]] ||
    die "TARGETS must include encrypted and direct"
HAVE_RELAY=0
[[ " ${TARGETS[*]} " == *" relay "* ]] && HAVE_RELAY=1
HAVE_CIPHER=0
[[ " ${TARGETS[*]} " == *" cipher "* ]] && HAVE_CIPHER=1

[[ -x $PG_BIN/initdb && -x $PG_BIN/pg_ctl && -x $PG_BIN/postgres ]] ||
    die "no PostgreSQL server binaries in $PG_BIN (set PG_BIN; Debian/Ubuntu: apt-get install -y postgresql-15)"
PSQL=$PG_BIN/psql
[[ -x $PSQL ]] || PSQL=$(command -v psql) || die "psql not found"
command -v timeout >/dev/null || die "timeout (coreutils) not found"

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
CHILD_PID=""

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
    if [[ -n $CHILD_PID ]]; then
        kill -TERM "$CHILD_PID" 2>/dev/null
        wait "$CHILD_PID" 2>/dev/null
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

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pgveil-copy.XXXXXX")
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
PSQL_VERSION=$("$PSQL" --version | awk '{print $3}')
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

if [[ $INDEX == 1 ]]; then
    INDEX_SQL="CREATE INDEX customers_email_idx ON customers (email);"
    INDEX_DESC="a non-unique btree index on email in both tables"
else
    INDEX_SQL=""
    INDEX_DESC="no indexes"
fi
# The schema is created directly (pgveil learns it from the catalog when a
# client connects). Same columns in both; crm_enc's $STORAGE columns hold
# pgveil's envelopes.
sql "$PG_PORT" postgres -c "create database crm_enc" -c "create database crm_plain" >/dev/null
sql "$PG_PORT" crm_enc >/dev/null <<EOF
CREATE TABLE customers (
    id          bigint,
    name        $STORAGE,
    email       $STORAGE,
    phone       $STORAGE,
    national_id $STORAGE,
    country     text
);
$INDEX_SQL
EOF
sql "$PG_PORT" crm_plain >/dev/null <<EOF
CREATE TABLE customers (
    id          bigint,
    name        text,
    email       text,
    phone       text,
    national_id text,
    country     text
);
$INDEX_SQL
EOF

# --- pgveil A (encrypting) and B (plain relay) -------------------------------------

KEYGEN=$("$PGVEIL_BIN" keygen --config /dev/null 2>/dev/null) || die "pgveil keygen failed"
KEY=$(sed -n 1p <<<"$KEYGEN")
CHECK_LINE=$(sed -n 2p <<<"$KEYGEN")
[[ -n $KEY && $CHECK_LINE == check\ =* ]] || die "unexpected output of pgveil keygen"
(umask 077 && printf '%s\n' "$KEY" >"$WORK/master.key")
chmod 600 "$WORK/master.key"
unset KEY KEYGEN

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
"$PGVEIL_BIN" run --config "$WORK/pgveil-a.toml" >"$WORK/pgveil-a.log" 2>&1 &
PGVEIL_A_PID=$!
wait_ready "pgveil A" "$PGVEIL_A_PORT" crm_enc
kill -0 "$PGVEIL_A_PID" 2>/dev/null || die "pgveil A exited"
log "pgveil A (4 encrypted columns) on port $PGVEIL_A_PORT"
if ((HAVE_RELAY)); then
    "$PGVEIL_BIN" run --config "$WORK/pgveil-b.toml" >"$WORK/pgveil-b.log" 2>&1 &
    PGVEIL_B_PID=$!
    wait_ready "pgveil B" "$PGVEIL_B_PORT" crm_plain
    kill -0 "$PGVEIL_B_PID" 2>/dev/null || die "pgveil B exited"
    log "pgveil B (plain relay) on port $PGVEIL_B_PORT"
fi

# --- the CSV -------------------------------------------------------------------------

# Customer i: a first and last name from small lists (some non-ASCII; a few
# with ", Jr."-style suffixes or a "quoted" nickname, which need CSV
# quoting), an email built from the name and i (so unique), a phone and a
# national id in the country's usual shape (some phones with ", ext. N"),
# and a country name (two of them contain a comma). About 0.5% of names,
# emails and phones and 1% of national ids are NULL (an unquoted empty
# field); 0.5% of names are the empty string (""). Fields are quoted exactly
# when PostgreSQL's COPY TO would quote them (empty, or containing a comma,
# quote, CR or LF), so a COPY TO of the loaded table reproduces the file.
CSV=$WORK/customers.csv
log "generating $ROWS rows into $CSV"
LC_ALL=C awk -v rows="$ROWS" '
function pick(list, n) { return list[1 + int(rand() * n)] }
function digits(k,   s) { s = ""; while (k > 0) { s = s int(rand() * 10); k-- } return s }
function q(s) {
    if (s == "") return "\"\""
    if (s ~ /[,"\r\n]/) { gsub(/"/, "\"\"", s); return "\"" s "\"" }
    return s
}
BEGIN {
    srand(20261127)
    nfirst = split("James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara Richard Susan Joseph Jessica Thomas Sarah Charles Karen José María François Zoë Jürgen Søren Łukasz Çağla Siobhán Björn Chloé Renée Mohammed Aiko Wei Olga Ingrid Ana-Sofía Nguyễn Dmitri Priya Kwame Fatima Hiroshi Amélie Ólafur Zsófia Mehmet Yusuf Lucía", FIRST, " ")
    nlast = split("Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez Wilson Anderson Müller Schäfer Dubois Lefèvre Østergaard Kowalski Nowak Yılmaz O\047Brien Ní_Bhriain Åberg Sánchez Pérez Ivanov Tanaka Suzuki Kim Nguyen Patel Okafor Mensah Rossi Bianchi Van_der_Berg De_la_Cruz Haddad Cohen Papadopoulos Novák Horváth Fernández Silva Santos", LAST, " ")
    for (k = 1; k <= nlast; k++) gsub(/_/, " ", LAST[k])
    nsuffix = split("Jr. Sr. III PhD MD", SUFFIX, " ")
    nnick = split("Bob Liz Bill Kate Sasha Jo DJ", NICK, " ")
    ndomain = split("example.com example.org mail.example.net example.co.uk example.de post.example.fr example.jp", DOMAIN, " ")
    # country name | dialling code | national id shape
    ncountry = split("United States|1|us;United Kingdom|44|uk;Germany|49|de;France|33|fr;Japan|81|jp;Brazil|55|br;India|91|in;Côte d\047Ivoire|225|ci;Korea, Republic of|82|kr;Türkiye|90|tr;Bolivia, Plurinational State of|591|bo;España|34|es", COUNTRY, ";")
    for (i = 1; i <= rows; i++) {
        split(COUNTRY[1 + int(rand() * ncountry)], c, "|")
        first = pick(FIRST, nfirst); last = pick(LAST, nlast)
        r = rand()
        if (r < 0.005) name = "\001"
        else if (r < 0.010) name = ""
        else if (r < 0.030) name = first " " last ", " pick(SUFFIX, nsuffix)
        else if (r < 0.040) name = first " \"" pick(NICK, nnick) "\" " last
        else name = first " " last
        if (rand() < 0.005) email = "\001"
        else {
            local = tolower(first "." last)
            gsub(/[ \047]/, "", local)
            email = local i "@" pick(DOMAIN, ndomain)
        }
        r = rand()
        if (r < 0.005) phone = "\001"
        else {
            phone = "+" c[2] " " digits(3) " " digits(3) " " digits(4)
            if (r < 0.015) phone = phone ", ext. " digits(3)
        }
        r = rand()
        if (r < 0.01) nid = "\001"
        else if (c[3] == "us") nid = digits(3) "-" digits(2) "-" digits(4)
        else if (c[3] == "uk") nid = sprintf("%c%c %s %s %s %c", 65 + int(rand() * 26), 65 + int(rand() * 26), digits(2), digits(2), digits(2), 65 + int(rand() * 4))
        else if (c[3] == "fr") nid = (1 + int(rand() * 2)) " " digits(2) " " digits(2) " " digits(2) " " digits(3) " " digits(3) " " digits(2)
        else if (c[3] == "br") nid = digits(3) "." digits(3) "." digits(3) "-" digits(2)
        else if (c[3] == "es") nid = digits(8) sprintf("%c", 65 + int(rand() * 26))
        else nid = digits(11)
        line = i
        line = line "," (name == "\001" ? "" : q(name))
        line = line "," (email == "\001" ? "" : q(email))
        line = line "," (phone == "\001" ? "" : q(phone))
        line = line "," (nid == "\001" ? "" : q(nid))
        line = line "," q(c[1])
        print line
    }
}' >"$CSV"
CSV_BYTES=$(stat -c %s "$CSV")
log "$(awk -v b="$CSV_BYTES" -v n="$ROWS" 'BEGIN { printf "CSV: %.1f MB, %.0f bytes/row", b / 1e6, b / n }')"
chmod 644 "$CSV"

# --- the runs ------------------------------------------------------------------------

CLK_TCK=$(getconf CLK_TCK)

port_of() { case $1 in encrypted) echo "$PGVEIL_A_PORT" ;; relay) echo "$PGVEIL_B_PORT" ;; *) echo "$PG_PORT" ;; esac; }
db_of() { case $1 in encrypted | cipher) echo crm_enc ;; *) echo crm_plain ;; esac; }
pid_of() { case $1 in encrypted) echo "$PGVEIL_A_PID" ;; relay) echo "$PGVEIL_B_PID" ;; *) echo "" ;; esac; }

# CPU time (user + system, all threads) a process has used, in clock ticks.
cpu_ticks() {
    if [[ -n $1 && -r /proc/$1/stat ]]; then
        sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
    else
        echo 0
    fi
}

# vm_kb PID FIELD: VmHWM / VmRSS of a process in kB.
vm_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

check_pgveil_alive() {
    kill -0 "$PGVEIL_A_PID" 2>/dev/null || die "pgveil A exited"
    if ((HAVE_RELAY)); then kill -0 "$PGVEIL_B_PID" 2>/dev/null || die "pgveil B exited"; fi
}

# pgveil_log_lines FILE: lines in a pgveil log; its level is warn, so each
# one is a warning or an error.
pgveil_log_lines() { grep -c . "$1" 2>/dev/null || true; }

# run_copy TARGET DIRECTION: one timed psql \copy against TARGET; DIRECTION
# is "from" (the CSV into the table) or "to" (the table to /dev/null). Sets
# RUN_RPS (rows/s), RUN_SECS, RUN_CPU_US (pgveil's CPU per row; empty for
# direct). Fails on a psql error, a wrong row count, or a timeout (hang).
run_copy() {
    local target=$1 dir=$2 cmd out pid before after t0 t1 rc
    if [[ $dir == from ]]; then
        if [[ $target == cipher ]]; then
            cmd="\\copy customers from '$WORK/cipher.csv' with (format csv)"
        else
            cmd="\\copy customers from '$CSV' with (format csv)"
        fi
    else
        cmd="\\copy customers to '/dev/null' with (format csv)"
    fi
    out="$WORK/run-$target-$dir.log"
    pid=$(pid_of "$target")
    before=$(cpu_ticks "$pid")
    t0=$(date +%s%N)
    # In the background, so that a signal to this script is handled at once.
    timeout "$TIMEOUT" "$PSQL" -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$(port_of "$target")" -U "$DB_USER" \
        -d "$(db_of "$target")" -c "$cmd" >"$out" 2>&1 &
    CHILD_PID=$!
    rc=0
    wait "$CHILD_PID" || rc=$?
    CHILD_PID=""
    t1=$(date +%s%N)
    after=$(cpu_ticks "$pid")
    if ((rc == 124)); then
        cat "$out" >&2
        die "COPY ${dir^^} against $target did not finish within ${TIMEOUT}s (hang?)"
    fi
    if ((rc != 0)); then
        cat "$out" >&2
        die "psql \\copy $dir failed against $target (exit $rc)"
    fi
    if [[ $(cat "$out") != "COPY $ROWS" ]]; then
        cat "$out" >&2
        die "psql \\copy $dir against $target did not report 'COPY $ROWS'"
    fi
    check_pgveil_alive
    RUN_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
    RUN_RPS=$(awk -v s="$RUN_SECS" -v n="$ROWS" 'BEGIN { printf "%.0f", n / s }')
    RUN_CPU_US=""
    if [[ -n $pid ]]; then
        RUN_CPU_US=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$ROWS" 'BEGIN { printf "%.2f", t / hz / n * 1e6 }')
    fi
}

# prepare_load TARGET: empty the target's table and checkpoint, so that
# every load starts from the same state (not timed).
prepare_load() {
    sql "$PG_PORT" "$(db_of "$1")" -c "TRUNCATE customers" -c "CHECKPOINT" >/dev/null
}

count_rows() { sql "$PG_PORT" "$1" -c "select count(*) from customers"; }

median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }

HWM_START=$(vm_kb "$PGVEIL_A_PID" VmHWM)
# Warm-up (not timed): one load through pgveil A and one direct; then save
# what pgveil A stored (read directly: bytea in hex, or pgv:base64 text) for
# the cipher target.
log "warm-up: one untimed load per database"
for t in encrypted direct; do
    prepare_load "$t"
    run_copy "$t" from
done
if ((HAVE_CIPHER)); then
    "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -d crm_enc \
        -c "\\copy customers to '$WORK/cipher.csv' with (format csv)" >/dev/null 2>"$WORK/cipher.log" ||
        { cat "$WORK/cipher.log" >&2; die "saving the ciphertext of crm_enc failed"; }
    CIPHER_BYTES=$(stat -c %s "$WORK/cipher.csv")
fi
last_enc_load=encrypted
declare -A RPS SECS CPU   # "direction target" -> space-separated figures, one per round
if [[ -n $RESULTS ]]; then echo "round,direction,target,rows,seconds,rows_per_s,pgveil_cpu_us_per_row,load1" >"$RESULTS"; fi
log "$ROUNDS rounds x targets (${TARGETS[*]}): \\copy customers from CSV ($ROWS rows, $INDEX_DESC)$( ((COPY_TO)) && echo ', then \copy customers to /dev/null')"
for ((r = 1; r <= ROUNDS; r++)); do
    # Rotate which target goes first, so no target always follows another.
    order=()
    for ((i = 0; i < ${#TARGETS[@]}; i++)); do order+=("${TARGETS[$(((i + r - 1) % ${#TARGETS[@]}))]}"); done
    for t in "${order[@]}"; do
        prepare_load "$t"
        run_copy "$t" from
        n=$(count_rows "$(db_of "$t")")
        [[ $n == "$ROWS" ]] || die "after COPY FROM against $t: $n rows in $(db_of "$t"), expected $ROWS"
        [[ $(db_of "$t") == crm_enc ]] && last_enc_load=$t
        read -r load _ </proc/loadavg
        RPS["from $t"]+="$RUN_RPS "
        SECS["from $t"]+="$RUN_SECS "
        CPU["from $t"]+="$RUN_CPU_US "
        log "$(printf 'round %d/%d  COPY FROM  %-9s  %7.2f s  %8.0f rows/s  pgveil CPU %5s us/row  load %s' \
            "$r" "$ROUNDS" "$t" "$RUN_SECS" "$RUN_RPS" "${RUN_CPU_US:--}" "$load")"
        if [[ -n $RESULTS ]]; then echo "$r,from,$t,$ROWS,$RUN_SECS,$RUN_RPS,$RUN_CPU_US,$load" >>"$RESULTS"; fi
    done
done
# The verification reads what pgveil A loaded: load once more if the last
# load of crm_enc was the direct load of the saved ciphertext.
if [[ $last_enc_load != encrypted ]]; then
    prepare_load encrypted
    run_copy encrypted from
fi
HWM_LOAD=$(vm_kb "$PGVEIL_A_PID" VmHWM)
RSS_LOAD=$(vm_kb "$PGVEIL_A_PID" VmRSS)

# The tables now hold the CSV (the last load of each). COPY TO reads them.
if ((COPY_TO)); then
    for ((r = 1; r <= ROUNDS; r++)); do
        order=()
        for ((i = 0; i < ${#TARGETS[@]}; i++)); do order+=("${TARGETS[$(((i + r - 1) % ${#TARGETS[@]}))]}"); done
        for t in "${order[@]}"; do
            run_copy "$t" to
            read -r load _ </proc/loadavg
            RPS["to $t"]+="$RUN_RPS "
            SECS["to $t"]+="$RUN_SECS "
            CPU["to $t"]+="$RUN_CPU_US "
            log "$(printf 'round %d/%d  COPY TO    %-9s  %7.2f s  %8.0f rows/s  pgveil CPU %5s us/row  load %s' \
                "$r" "$ROUNDS" "$t" "$RUN_SECS" "$RUN_RPS" "${RUN_CPU_US:--}" "$load")"
            if [[ -n $RESULTS ]]; then echo "$r,to,$t,$ROWS,$RUN_SECS,$RUN_RPS,$RUN_CPU_US,$load" >>"$RESULTS"; fi
        done
    done
    HWM_TO=$(vm_kb "$PGVEIL_A_PID" VmHWM)
fi

# --- verification -----------------------------------------------------------------------

log "verifying"
# 1. Row counts, directly.
n_enc=$(count_rows crm_enc)
n_plain=$(count_rows crm_plain)
[[ $n_enc == "$ROWS" && $n_plain == "$ROWS" ]] || die "expected $ROWS rows, found $n_enc (crm_enc) and $n_plain (crm_plain)"
# 2. Directly: every non-NULL value of the four columns is an envelope (first
#    byte 0x01, at least 19 bytes; in text storage "pgv:" and the envelope
#    in base64), NULLs are where the CSV has them, and no email is stored
#    as plaintext.
not_envelope() {
    if [[ $STORAGE == bytea ]]; then
        echo "($1 IS NOT NULL AND (get_byte($1, 0) <> 1 OR octet_length($1) < 19))"
    else
        echo "($1 IS NOT NULL AND (left($1, 4) <> 'pgv:' OR get_byte(decode(substr($1, 5), 'base64'), 0) <> 1 OR octet_length(decode(substr($1, 5), 'base64')) < 19))"
    fi
}
bad=$(sql "$PG_PORT" crm_enc -c "
    SELECT count(*) FROM customers
    WHERE $(not_envelope name) OR $(not_envelope email) OR $(not_envelope phone) OR $(not_envelope national_id)")
[[ $bad == 0 ]] || die "crm_enc: $bad of $n_enc rows hold something other than pgveil envelopes"
nulls_sql="SELECT count(*) FILTER (WHERE name IS NULL) || ' ' || count(*) FILTER (WHERE email IS NULL) || ' ' ||
           count(*) FILTER (WHERE phone IS NULL) || ' ' || count(*) FILTER (WHERE national_id IS NULL) FROM customers"
nulls_enc=$(sql "$PG_PORT" crm_enc -c "$nulls_sql")
nulls_plain=$(sql "$PG_PORT" crm_plain -c "$nulls_sql")
[[ $nulls_enc == "$nulls_plain" ]] || die "NULLs per column differ: crm_enc $nulls_enc, crm_plain $nulls_plain"
emails_enc=$(sql "$PG_PORT" crm_enc -c "select count(email) from customers")
# 3. The whole table read back through pgveil A (COPY TO, decrypting) is
#    byte-identical to the direct COPY TO of crm_plain, which is the CSV.
"$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -d crm_plain \
    -c "\\copy customers to '$WORK/out-plain.csv' with (format csv)" >/dev/null 2>"$WORK/verify.log" ||
    { cat "$WORK/verify.log" >&2; die "direct COPY TO of crm_plain failed"; }
timeout "$TIMEOUT" "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGVEIL_A_PORT" -U "$DB_USER" -d crm_enc \
    -c "\\copy customers to '$WORK/out-enc.csv' with (format csv)" >/dev/null 2>"$WORK/verify.log" ||
    { cat "$WORK/verify.log" >&2; die "COPY TO of crm_enc through pgveil A failed"; }
# first_diff A B: the first line where two files differ, from each.
first_diff() {
    local line
    line=$(cmp "$1" "$2" 2>/dev/null | sed -n 's/.* line \([0-9]*\)$/\1/p' || true)
    [[ -n $line ]] || return 0
    echo "first difference at line $line:" >&2
    sed -n "${line}p" "$1" | head -c 300 >&2
    sed -n "${line}p" "$2" | head -c 300 >&2
}
# COPY FROM fills free space in earlier pages, so a table's physical order
# is not quite the load order: sort both outputs by id (the first field,
# never quoted; no field holds a line break).
for f in out-plain out-enc; do
    LC_ALL=C sort -s -t, -k1,1n "$WORK/$f.csv" >"$WORK/$f.sorted.csv"
done
if ! cmp -s "$WORK/out-plain.sorted.csv" "$CSV"; then
    first_diff "$WORK/out-plain.sorted.csv" "$CSV"
    die "direct COPY TO of crm_plain differs from the CSV (generator quoting?)"
fi
if ! cmp -s "$WORK/out-enc.sorted.csv" "$WORK/out-plain.sorted.csv"; then
    first_diff "$WORK/out-enc.sorted.csv" "$WORK/out-plain.sorted.csv"
    die "crm_enc read through pgveil A differs from the CSV"
fi
# 4. Through pgveil A (simple protocol): a COPY-loaded row is found by its
#    email (equality on the deterministic ciphertext) and comes back whole.
k=$(((ROWS + 1) / 2))
row_sql="SELECT id, name, email, phone, national_id, country FROM customers WHERE id = $k"
want=$(sql "$PG_PORT" crm_plain -F '|' -P null='<NULL>' -c "$row_sql")
email=$(sql "$PG_PORT" crm_plain -c "SELECT email FROM customers WHERE id = $k")
if [[ -n $email ]]; then
    got=$(sql "$PGVEIL_A_PORT" crm_enc -F '|' -P null='<NULL>' -v email="$email" <<'EOF'
SELECT id, name, email, phone, national_id, country FROM customers WHERE email = :'email';
EOF
    )
    [[ $got == "$want" ]] || die "lookup of customer $k by email through pgveil A returned '$got', expected '$want'"
fi
log "verified: $ROWS rows in both databases; crm_enc holds only envelopes ($emails_enc non-NULL emails, none in plaintext; NULLs per column as in the CSV: $nulls_enc); read back through pgveil A it is byte-identical to the CSV; lookup by email through pgveil A works"
SIZE_ENC=$(sql "$PG_PORT" crm_enc -c "select pg_size_pretty(pg_total_relation_size('customers'))")
SIZE_PLAIN=$(sql "$PG_PORT" crm_plain -c "select pg_size_pretty(pg_total_relation_size('customers'))")
warn_a=$(pgveil_log_lines "$WORK/pgveil-a.log")
warn_b=0
((HAVE_RELAY)) && warn_b=$(pgveil_log_lines "$WORK/pgveil-b.log")
if ((warn_a + warn_b > 0)); then
    log "pgveil log lines at warn or above: A $warn_a, B $warn_b; first ones:"
    head -n 5 "$WORK/pgveil-a.log" >&2
    ((HAVE_RELAY)) && head -n 5 "$WORK/pgveil-b.log" >&2
fi

# --- report ---------------------------------------------------------------------------

read -r LOAD1_END _ </proc/loadavg || LOAD1_END=0
echo
echo "machine: $NCPU CPUs, ${CPU_MODEL:-unknown CPU}, $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM; load average $LOAD1 at start, $LOAD1_END at end"
echo "PostgreSQL $PG_VERSION (fsync=off), psql $PSQL_VERSION, pgveil $PGVEIL_VERSION ($PGVEIL_REV)"
echo "$ROWS rows, CSV $(awk -v b="$CSV_BYTES" 'BEGIN { printf "%.1f MB", b / 1e6 }'), crm_enc storage $STORAGE, $INDEX_DESC, median of $ROUNDS rounds; table size after load: crm_enc $SIZE_ENC, crm_plain $SIZE_PLAIN"
legend="encrypted = pgveil A -> crm_enc (4 encrypted columns); direct = PostgreSQL -> crm_plain (text)"
((HAVE_RELAY)) && legend+="; relay = pgveil B (plain relay) -> crm_plain"
((HAVE_CIPHER)) && legend+="; cipher = PostgreSQL -> crm_enc (the ciphertext, $(awk -v b="$CIPHER_BYTES" 'BEGIN { printf "%.1f MB", b / 1e6 }') as CSV)"
echo "$legend"
echo "pgveil A VmHWM: $((HWM_START / 1024)) MiB at start, $((HWM_LOAD / 1024)) MiB after the COPY FROM runs (VmRSS then $((RSS_LOAD / 1024)) MiB)$( ((COPY_TO)) && echo ", $((HWM_TO / 1024)) MiB after the COPY TO runs")"
echo
# paired DIR A B: A/B of each round, space-separated.
paired() {
    paste -d' ' <(tr ' ' '\n' <<<"${RPS["$1 $2"]}") <(tr ' ' '\n' <<<"${RPS["$1 $3"]}") |
        awk 'NF == 2 {printf "%.4f ", $1 / $2}'
}
dirs=(from)
((COPY_TO)) && dirs+=(to)
echo "| COPY | target | rows/s (median) | seconds (median) | vs direct | median of paired ratios | pgveil CPU µs/row |"
echo "|------|--------|----------------:|-----------------:|----------:|------------------------:|------------------:|"
for d in "${dirs[@]}"; do
    dm=$(median <<<"${RPS["$d direct"]}")
    for t in "${TARGETS[@]}"; do
        m=$(median <<<"${RPS["$d $t"]}")
        s=$(median <<<"${SECS["$d $t"]}")
        c=-
        [[ -z $(pid_of "$t") ]] || c=$(median <<<"${CPU["$d $t"]}")
        pr=$(median <<<"$(paired "$d" "$t" direct)")
        awk -v d="${d^^}" -v t="$t" -v m="$m" -v s="$s" -v dm="$dm" -v pr="$pr" -v c="$c" 'BEGIN {
            if (c != "-") c = sprintf("%.2f", c)
            printf "| %-4s | %-9s | %15.0f | %16.2f | %9.2f | %23.2f | %17s |\n", d, t, m, s, m / dm, pr, c }'
    done
done
echo
echo "per round (rows/s; paired ratios compare runs a few seconds apart):"
for d in "${dirs[@]}"; do
    for t in "${TARGETS[@]}"; do
        printf '  %-4s %-22s %s\n' "${d^^}" "$t" "$(awk '{for (i = 1; i <= NF; i++) printf "%9.0f", $i}' <<<"${RPS["$d $t"]}")"
    done
    for t in "${TARGETS[@]}"; do
        [[ $t == direct ]] && continue
        printf '  %-4s %-22s %s\n' "${d^^}" "$t/direct" "$(awk '{for (i = 1; i <= NF; i++) printf "%9.2f", $i}' <<<"$(paired "$d" "$t" direct)")"
        [[ -n $(pid_of "$t") ]] || continue
        printf '  %-4s %-22s %s\n' "${d^^}" "$t CPU us/row" "$(awk '{for (i = 1; i <= NF; i++) printf "%9.2f", $i}' <<<"${CPU["$d $t"]}")"
    done
done
e=$(median <<<"${RPS["from encrypted"]}")
dm=$(median <<<"${RPS["from direct"]}")
echo
awk -v e="$e" -v d="$dm" 'BEGIN { printf "COPY FROM encrypted/direct = %.2f (target >= 0.50: %s)\n", e / d, (e / d >= 0.5) ? "met" : "NOT met" }'
