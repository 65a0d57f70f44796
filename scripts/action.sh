#!/usr/bin/env bash
# The GitHub Action's one step (action.yml): find a `reapkit` binary — REAPKIT_BINARY, one on
# PATH, else the release for this machine, downloaded into $RUNNER_TEMP — and run it with
# REAPKIT_ACTION_ARGS (default `reap`), annotations on. Its exit status is reapkit's: 0 clean,
# 1 leaked, 2 could not check.
set -euo pipefail

args=${REAPKIT_ACTION_ARGS:-reap}
version=${REAPKIT_ACTION_VERSION:-latest}
bin=${REAPKIT_BINARY:-}

if [ -z "$bin" ] && command -v reapkit >/dev/null 2>&1; then
  bin=$(command -v reapkit)
fi
if [ -z "$bin" ]; then
  target="$(uname -m)-unknown-linux-gnu"
  repo="${REAPKIT_ACTION_REPO:-https://github.com/reapkit/reapkit}"
  case "$version" in
    latest) url="$repo/releases/latest/download/reapkit-$target.tar.gz" ;;
    *) url="$repo/releases/download/$version/reapkit-$target.tar.gz" ;;
  esac
  dir="${RUNNER_TEMP:-/tmp}/reapkit-$version"
  mkdir -p "$dir"
  echo "reapkit: downloading $url" >&2
  curl --fail --silent --show-error --location --retry 3 "$url" | tar -xz -C "$dir"
  bin="$dir/reapkit"
fi

export GITHUB_ACTIONS="${GITHUB_ACTIONS:-true}"
# The arguments split as a shell would split them, quotes and backslashes included
# (`reap --match 'sleep *'`), with nothing expanded: no glob (`sleep*` is not a file name of the
# working directory), no variable, no command. xargs parses the quotes and hands the words over
# NUL-separated.
mapfile -d '' -t argv < <(printf '%s' "$args" | xargs printf '%s\0')
exec "$bin" "${argv[@]}"
