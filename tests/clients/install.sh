#!/usr/bin/env bash
# Installs every client driver the driver-compatibility suite needs, from
# package registries, into places git ignores:
#   - Python venv target/clients/venv: psycopg 3, psycopg2, asyncpg, SQLAlchemy 2
#     (pins in tests/clients/python/requirements.txt)
#   - npm packages pg and postgres (postgres.js) in tests/clients/node/node_modules
#   - pgjdbc from the Debian package libpostgresql-jdbc-java
#     (/usr/share/java/postgresql.jar), plus a JDK to run it
# Idempotent: when everything is already in place it only verifies (a few
# seconds). Any driver that cannot be installed fails the script (non-zero):
# the suite never skips a driver.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

VENV="$ROOT/target/clients/venv"
REQS="$ROOT/tests/clients/python/requirements.txt"
NODE_DIR="$ROOT/tests/clients/node"
JDBC_JAR=/usr/share/java/postgresql.jar

say() { echo "install.sh: $*"; }
die() { echo "install.sh: FAILED: $*" >&2; exit 1; }

APT_UPDATED=0
# apt_install PKG... : installs Debian packages; runs `apt-get update -qq` only
# when the install fails without it. --reinstall is passed through.
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not available to install: $*"
  export DEBIAN_FRONTEND=noninteractive
  if apt-get install -y -qq "$@" >/dev/null 2>&1; then
    return 0
  fi
  if [ "$APT_UPDATED" = 0 ]; then
    say "apt-get install $* failed; running apt-get update -qq and retrying"
    apt-get update -qq || die "apt-get update failed"
    APT_UPDATED=1
  fi
  apt-get install -y -qq "$@" >/dev/null || die "apt-get install $* failed"
}

# ---------------------------------------------------------------- Python ----
venv_ok() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1
}

python_drivers_ok() {
  "$VENV/bin/python" - <<'PY' >/dev/null 2>&1
import psycopg, psycopg2, asyncpg, sqlalchemy
import psycopg_binary  # noqa: F401  (the binary implementation of psycopg 3)
assert psycopg.__version__.startswith("3.")
assert sqlalchemy.__version__.startswith("2.")
PY
}

stamp="$VENV/.requirements.sha256"
want_stamp="$(sha256sum "$REQS" | cut -d' ' -f1)"
if venv_ok && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ] && python_drivers_ok; then
  say "python venv up to date: $VENV"
else
  if ! venv_ok; then
    PY="${PYTHON:-python3}"
    if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
      say "'$PY -m venv' unusable; installing python3-venv"
      apt_install python3-venv
      PY=/usr/bin/python3
      "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1 \
        || die "python3 -m venv still unusable after installing python3-venv"
    fi
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    say "creating venv $VENV with $("$PY" --version 2>&1)"
    "$PY" -m venv "$VENV" || die "could not create the venv $VENV"
  fi
  say "pip install -r ${REQS#"$ROOT"/}"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQS" \
    || die "pip could not install the Python drivers (see above)"
  python_drivers_ok || die "Python drivers installed but do not import"
  echo "$want_stamp" > "$stamp"
fi
"$VENV/bin/python" - <<'PY' || die "could not report the Python driver versions"
import sys, psycopg, psycopg2, asyncpg, sqlalchemy
print("install.sh:   python %s; psycopg %s (impl %s); psycopg2 %s; asyncpg %s; SQLAlchemy %s" % (
    sys.version.split()[0], psycopg.__version__, psycopg.pq.__impl__,
    psycopg2.__version__.split()[0], asyncpg.__version__, sqlalchemy.__version__))
PY

# ------------------------------------------------------------------ Node ----
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  say "node/npm missing; installing nodejs and npm"
  apt_install nodejs npm
fi
command -v node >/dev/null 2>&1 || die "node not found after install"
command -v npm >/dev/null 2>&1 || die "npm not found after install"

node_drivers_ok() {
  (cd "$NODE_DIR" && node -e '
    const fs = require("fs");
    const want = require("./package.json").dependencies;
    for (const [name, version] of Object.entries(want)) {
      require(name);
      const got = JSON.parse(fs.readFileSync("node_modules/" + name + "/package.json", "utf8")).version;
      if (got !== version) { throw new Error(name + " " + got + " != " + version); }
    }') >/dev/null 2>&1
}

if node_drivers_ok; then
  say "node packages up to date: ${NODE_DIR#"$ROOT"/}/node_modules"
else
  say "npm install in ${NODE_DIR#"$ROOT"/}"
  (cd "$NODE_DIR" && npm install --no-audit --no-fund --loglevel=error) \
    || die "npm install failed in $NODE_DIR"
  node_drivers_ok || die "node packages installed but do not load at the pinned versions"
fi
(cd "$NODE_DIR" && node -e '
  const v = (n) => JSON.parse(require("fs").readFileSync("node_modules/" + n + "/package.json", "utf8")).version;
  console.log("install.sh:   node " + process.version + "; pg " + v("pg") + "; postgres " + v("postgres"))') \
  || die "could not report the node package versions"

# ------------------------------------------------------------------ Java ----
if [ ! -s "$JDBC_JAR" ]; then
  if dpkg -s libpostgresql-jdbc-java >/dev/null 2>&1; then
    say "$JDBC_JAR missing though libpostgresql-jdbc-java is installed; reinstalling"
    apt_install --reinstall libpostgresql-jdbc-java
  else
    say "installing libpostgresql-jdbc-java"
    apt_install libpostgresql-jdbc-java
  fi
fi
[ -s "$JDBC_JAR" ] || die "$JDBC_JAR still missing after installing libpostgresql-jdbc-java"
if ! command -v javac >/dev/null 2>&1 || ! command -v java >/dev/null 2>&1; then
  say "java/javac missing; installing default-jdk-headless"
  apt_install default-jdk-headless
fi
command -v javac >/dev/null 2>&1 || die "javac not found after installing default-jdk-headless"
jdbc_version="$(unzip -p "$JDBC_JAR" META-INF/MANIFEST.MF 2>/dev/null \
  | sed -n 's/^Implementation-Version: *//p' | tr -d '\r' | head -n 1 || true)"
say "  pgjdbc ${jdbc_version:-(version unknown)} at $(readlink -f "$JDBC_JAR"); $(java -version 2>&1 | head -n 1)"

say "all client drivers installed"
