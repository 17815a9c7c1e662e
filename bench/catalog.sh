#!/usr/bin/env bash
# What keeping the catalog fresh costs (issue 16), on a throwaway cluster:
# lookups by an encrypted email through one pgveil, interleaved across the
# ways pgveil learns of schema changes made outside it, switched by SIGHUP:
#   notified   event trigger installed, [catalog] max_age_ms = 0 (pgveil
#              re-reads only when notified)
#   age1000    no trigger, max_age_ms = 1000 (the default)
#   age100     no trigger, max_age_ms = 100
# for pgbench -M simple and -M prepared; prints the median tps of each and
# its ratio to `notified`, and pgveil's catalog loads per second.
# Then the latency of a notification: TRIALS times, a view over the
# encrypted table is created directly and a new psql through pgveil reads
# it at once, while one idle session stays open through pgveil; prints in
# how many trials the first read was already decrypted (with max_age_ms =
# 0, only the notification the idle session hears can make it so).
#
# Usage:  bench/catalog.sh
# Environment:
#   DURATION    seconds per pgbench run              (default 5)
#   ROUNDS      rounds over modes x protocols        (default 3)
#   CLIENTS     pgbench -c                           (default 8)
#   ROWS        customers                            (default 20000)
#   TRIALS      notification trials                  (default 20)
#   PG_BIN      PostgreSQL server binaries (default /usr/lib/postgresql/15/bin)
#   PGVEIL_BIN  pgveil binary (default target/release/pgveil, built if missing)
set -euo pipefail

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-8}
ROWS=${ROWS:-20000}
TRIALS=${TRIALS:-20}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGVEIL_BIN=${PGVEIL_BIN:-$ROOT/target/release/pgveil}
[ -x "$PGVEIL_BIN" ] || (cd "$ROOT" && cargo build --release)
PGBENCH=$(command -v pgbench || echo "$PG_BIN/pgbench")

WORK=$(mktemp -d /tmp/pgveil-bench-catalog.XXXXXX)
AS=()
if [ "$(id -u)" = 0 ]; then
  chown postgres "$WORK"
  AS=(runuser -u postgres --)
fi
PGVEIL_PID=""
cleanup() {
  [ -n "$PGVEIL_PID" ] && kill "$PGVEIL_PID" 2>/dev/null || true
  "${AS[@]}" "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
PROXY_PORT=$(free_port)
METRICS_PORT=$(free_port)
"${AS[@]}" "$PG_BIN/initdb" -D "$WORK/data" -U postgres --auth=trust --no-sync >/dev/null
"${AS[@]}" "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w \
  -o "-p $PORT -k $WORK -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50" start >/dev/null
DIRECT=(psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
THROUGH=(psql -X -q -h 127.0.0.1 -p "$PROXY_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
"${DIRECT[@]}" -c "CREATE TABLE customers (id bigserial PRIMARY KEY, email bytea UNIQUE, country text)"

"$PGVEIL_BIN" keygen > "$WORK/keygen" 2>/dev/null
head -n 1 "$WORK/keygen" > "$WORK/master.key"
chmod 600 "$WORK/master.key"
CHECK=$(sed -n 2p "$WORK/keygen")
# write_config MAX_AGE_MS
write_config() {
  cat > "$WORK/proxy.toml" <<EOF
[listen]
address = "127.0.0.1:$PROXY_PORT"
[upstream]
address = "127.0.0.1:$PORT"
[keys]
master_key_file = "$WORK/master.key"
$CHECK
[metrics]
address = "127.0.0.1:$METRICS_PORT"
[log]
level = "warn"
[catalog]
max_age_ms = $1
[[encrypt]]
table = "customers"
column = "email"
EOF
}
write_config 0
"$PGVEIL_BIN" run --config "$WORK/proxy.toml" > "$WORK/pgveil.log" 2>&1 &
PGVEIL_PID=$!
for _ in $(seq 100); do "${THROUGH[@]}" -c "SELECT 1" >/dev/null 2>&1 && break; sleep 0.1; done
# Loaded through pgveil's COPY, so the emails are stored encrypted.
seq 1 "$ROWS" | sed 's/$/\tGB/' | "${THROUGH[@]}" -c "COPY customers (email, country) FROM STDIN"
"${DIRECT[@]}" -c "VACUUM ANALYZE customers"

metric() { curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | awk -v s="$1" 'index($0, s) == 1 { print $2 }'; }
loads() { metric 'pgveil_catalog_loads_total{result="changed"}' | awk -v u="$(metric 'pgveil_catalog_loads_total{result="unchanged"}')" '{ print $1 + u }'; }

# mode NAME: installs or drops the trigger, rewrites the config, SIGHUP.
mode() {
  case $1 in
    notified) "${DIRECT[@]}" -f <("$PGVEIL_BIN" guard --config "$WORK/proxy.toml" | sed -n '/^BEGIN;/,$p') 2>/dev/null; write_config 0 ;;
    age1000) "${DIRECT[@]}" -c "SET client_min_messages = warning; DROP EVENT TRIGGER IF EXISTS pgveil_catalog_changed"; write_config 1000 ;;
    age100) "${DIRECT[@]}" -c "SET client_min_messages = warning; DROP EVENT TRIGGER IF EXISTS pgveil_catalog_changed"; write_config 100 ;;
  esac
  kill -HUP "$PGVEIL_PID"
  sleep 0.3
}

echo '\set n random(1, '"$ROWS"')' > "$WORK/lookup.sql"
echo "SELECT id, country FROM customers WHERE email = :n::text;" >> "$WORK/lookup.sql"

declare -A TPS LOADS
for ((r = 1; r <= ROUNDS; r++)); do
  for m in notified age1000 age100; do
    mode "$m"
    for p in simple prepared; do
      before=$(loads)
      out=$("$PGBENCH" -n -M "$p" -c "$CLIENTS" -j 2 -T "$DURATION" -f "$WORK/lookup.sql" \
        -h 127.0.0.1 -p "$PROXY_PORT" -U postgres postgres 2>&1)
      grep -q 'number of failed transactions: [1-9]' <<<"$out" && { echo "$out"; exit 1; }
      tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
      [ -n "$tps" ] || { echo "$out"; exit 1; }
      after=$(loads)
      TPS["$m $p"]+="$tps "
      LOADS["$m $p"]+="$(awk -v a="$after" -v b="$before" -v d="$DURATION" 'BEGIN { printf "%.1f", (a - b) / d }') "
    done
  done
done

median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
echo "machine: $(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo); $(date -u +%Y-%m-%d)"
echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), pgbench -c $CLIENTS -j 2 -T $DURATION x $ROUNDS rounds, $ROWS rows, lookup by encrypted email"
printf '%-10s %-9s %10s %8s %14s\n' mode protocol "tps(med)" ratio "loads/s(med)"
for p in simple prepared; do
  base=$(median <<<"${TPS["notified $p"]}")
  for m in notified age1000 age100; do
    t=$(median <<<"${TPS["$m $p"]}")
    printf '%-10s %-9s %10.0f %8.3f %14s\n' "$m" "$p" "$t" "$(awk -v t="$t" -v b="$base" 'BEGIN { print t / b }')" "$(median <<<"${LOADS["$m $p"]}")"
  done
done

# --- notification latency --------------------------------------------------------
mode notified
"${THROUGH[@]}" -c "INSERT INTO customers (email, country) VALUES ('probe@example.com', 'XX')"
# One idle session stays open through pgveil (having run a statement, so
# it listens): the notification reaches pgveil through it.
mkfifo "$WORK/idle"
"${THROUGH[@]}" < "$WORK/idle" >/dev/null 2>&1 &
exec 3> "$WORK/idle"
echo "SELECT 1;" >&3
sleep 0.5
before=$(metric pgveil_catalog_notifications_total)
first=0
for ((i = 1; i <= TRIALS; i++)); do
  "${DIRECT[@]}" -c "CREATE VIEW v$i AS SELECT id, email FROM customers WHERE country = 'XX'"
  got=$("${THROUGH[@]}" -Atc "SELECT email FROM v$i")
  [ "$got" = "probe@example.com" ] && first=$((first + 1))
done
exec 3>&-
echo "notification: a view created directly was read decrypted by the very next connection's first statement in $first of $TRIALS trials (max_age_ms = 0, one idle session open)"
echo "notifications received during the trials: $(awk -v a="$(metric pgveil_catalog_notifications_total)" -v b="$before" 'BEGIN { print a - b }'); catalog loads changed $(metric 'pgveil_catalog_loads_total{result="changed"}'), unchanged $(metric 'pgveil_catalog_loads_total{result="unchanged"}')"
