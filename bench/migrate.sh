#!/usr/bin/env bash
# `pgveil migrate encrypt` throughput (issue 10): a CRM table of ROWS
# plaintext customers with four text columns to encrypt in place (email,
# phone, full_name, national_id), a primary key and a unique index on email,
# on a throwaway PostgreSQL cluster. Prints rows/s as the command reports it
# and as timed here, then checks with `migrate verify` that nothing is left.
#
# Usage:  bench/migrate.sh
#         ROWS=20000 bench/migrate.sh              # smoke run
# Environment:
#   ROWS        rows in the fixture                 (default 200000)
#   BATCH       --batch-size                        (default 1000)
#   PG_BIN      PostgreSQL server binaries (default /usr/lib/postgresql/15/bin)
#   PGVEIL_BIN  pgveil binary (default target/release/pgveil, built if missing)
set -euo pipefail

ROWS=${ROWS:-200000}
BATCH=${BATCH:-1000}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGVEIL_BIN=${PGVEIL_BIN:-$ROOT/target/release/pgveil}
[ -x "$PGVEIL_BIN" ] || (cd "$ROOT" && cargo build --release)

WORK=$(mktemp -d /tmp/pgveil-bench-migrate.XXXXXX)
AS=()
if [ "$(id -u)" = 0 ]; then
  chown postgres "$WORK"
  AS=(runuser -u postgres --)
fi
cleanup() {
  "${AS[@]}" "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${AS[@]}" "$PG_BIN/initdb" -D "$WORK/data" -U postgres --auth=trust --no-sync >/dev/null
"${AS[@]}" "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w \
  -o "-p $PORT -k $WORK -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off" start >/dev/null
PSQL=(psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)

"${PSQL[@]}" <<SQL
CREATE TABLE customers (
  id bigserial PRIMARY KEY, email text UNIQUE, phone text, full_name text,
  national_id text, country text, created_at timestamptz DEFAULT now());
INSERT INTO customers (email, phone, full_name, national_id, country)
SELECT 'customer' || g || '@example.com', '+44 20 7946 ' || lpad(g::text, 6, '0'),
       'Customer Number ' || g, 'NI' || lpad(g::text, 8, '0'), 'GB'
FROM generate_series(1, $ROWS) g;
VACUUM ANALYZE customers;
SQL

"$PGVEIL_BIN" keygen > "$WORK/keygen" 2>/dev/null
head -n 1 "$WORK/keygen" > "$WORK/master.key"
chmod 600 "$WORK/master.key"
CHECK=$(sed -n 2p "$WORK/keygen")
{
  echo '[listen]'; echo 'address = "127.0.0.1:0"'
  echo '[upstream]'; echo "address = \"127.0.0.1:$PORT\""
  echo '[keys]'; echo "master_key_file = \"$WORK/master.key\""; echo "$CHECK"
  for c in email phone full_name national_id; do
    printf '[[encrypt]]\ntable = "customers"\ncolumn = "%s"\nmigrating = true\n' "$c"
  done
} > "$WORK/proxy.toml"

URL="postgresql://postgres@127.0.0.1:$PORT/postgres?sslmode=disable"
START=$(date +%s.%N)
"$PGVEIL_BIN" --config "$WORK/proxy.toml" migrate encrypt --url "$URL" --batch-size "$BATCH" 2> "$WORK/migrate.log"
END=$(date +%s.%N)
grep "rows rewritten" "$WORK/migrate.log"
python3 - "$START" "$END" "$ROWS" <<'PY'
import sys
start, end, rows = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
print(f"migrate encrypt: {rows} rows x 4 columns in {end - start:.1f} s wall "
      f"(process included): {rows / (end - start):,.0f} rows/s")
PY
"$PGVEIL_BIN" --config "$WORK/proxy.toml" migrate verify --url "$URL" 2>&1 | tail -n 1
LEFT=$("${PSQL[@]}" -Atc "SELECT count(*) FROM customers WHERE email NOT LIKE 'pgv:%' OR phone NOT LIKE 'pgv:%' OR full_name NOT LIKE 'pgv:%' OR national_id NOT LIKE 'pgv:%'")
echo "plaintext values left (direct scan): $LEFT"
[ "$LEFT" = 0 ]
