#!/usr/bin/env bash
# Makes sure a Docker engine answers and the offline test image exists, for
# reapkit's Docker-guard tests:
#   - engine: the one in DOCKER_HOST, else /var/run/docker.sock. If nothing
#     answers there, installs Debian's docker.io (root only) and starts
#     `dockerd --bridge=none --iptables=false` detached (setsid nohup), log in
#     .deps/dockerd.log. The engine is left running on purpose.
#   - image: reapkit-busybox:latest, built offline with `docker import` from
#     Debian's busybox-static (/bin/busybox + one symlink per applet, /tmp).
# Exports nothing: tests use DOCKER_HOST if set, else the default socket.
#
# Idempotent and quick (~0.3 s) when everything is already there.
# All output goes to stderr.
# Usage: scripts/docker-up.sh [--verify]   (--verify: always time a container start/remove)
set -euo pipefail

IMAGE=reapkit-busybox:latest
# Bump when the rootfs recipe below changes: an image with another value is rebuilt.
IMAGE_REV=1
IMAGE_LABEL=org.reapkit.test-image-rev
DEFAULT_SOCK=/var/run/docker.sock
START_TIMEOUT=60 # seconds to wait for a freshly started dockerd

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
DEPS="$ROOT/.deps"
DOCKERD_LOG="$DEPS/dockerd.log"

VERIFY=0
for arg in "$@"; do
  case "$arg" in
    --verify) VERIFY=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "docker-up.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

SCRIPT_NAME=docker-up
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"


engine_up() { timeout 5 docker info >/dev/null 2>&1; }

CHANGED=0

# ---------------------------------------------------------------- engine
if ! command -v docker >/dev/null 2>&1; then
  apt_install "docker CLI missing" docker.io
  hash -r
fi

if engine_up; then
  log "engine answers (${DOCKER_HOST:-unix://$DEFAULT_SOCK})"
else
  # Only a local engine on the default socket can be started from here.
  case "${DOCKER_HOST:-}" in
    ""|"unix://$DEFAULT_SOCK"|"unix:///run/docker.sock") ;;
    *) die "DOCKER_HOST=$DOCKER_HOST does not answer 'docker info'. Start that engine, or unset DOCKER_HOST to use/start the local one at $DEFAULT_SOCK." ;;
  esac
  info_err="$(timeout 5 docker info 2>&1 >/dev/null || true)"
  if grep -qi 'permission denied' <<<"$info_err"; then
    die "no permission on $DEFAULT_SOCK. Run as root, or: sudo usermod -aG docker $(id -un) (then log in again)."
  fi

  if ! command -v dockerd >/dev/null 2>&1; then
    apt_install "dockerd missing" docker.io
    hash -r
    command -v dockerd >/dev/null 2>&1 || die "dockerd still missing after installing docker.io"
  fi
  [ "$(id -u)" = 0 ] \
    || die "no engine at $DEFAULT_SOCK and dockerd needs root. Run: sudo bash $ROOT/scripts/docker-up.sh   (or: sudo setsid nohup dockerd --bridge=none --iptables=false >/tmp/dockerd.log 2>&1 </dev/null &)"

  mkdir -p "$DEPS"

  # Live dockerd pids. Zombies are skipped: a killed dockerd whose parent is
  # gone lingers as <defunct> until init reaps it (seen here: up to ~1 s).
  live_dockerds() {
    local p st
    for p in $(pgrep -x dockerd 2>/dev/null || true); do
      st="$(ps -o stat= -p "$p" 2>/dev/null || true)"
      case "$st" in ""|Z*) ;; *) echo "$p" ;; esac
    done
  }
  DOCKERD_PID=
  dockerd_alive() {
    if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null \
        && [ "$(ps -o stat= -p "$DOCKERD_PID" 2>/dev/null | cut -c1)" != Z ]; then
      return 0
    fi
    [ -n "$(live_dockerds)" ]
  }
  # wait_engine <what>: 0 once `docker info` answers; 1 if no dockerd process
  # is left or START_TIMEOUT passes.
  wait_engine() {
    local deadline=$((SECONDS + START_TIMEOUT))
    until engine_up; do
      dockerd_alive || { log "$1: dockerd exited"; return 1; }
      [ "$SECONDS" -lt "$deadline" ] || { log "$1: no answer after ${START_TIMEOUT}s"; return 1; }
      sleep 0.1
    done
  }

  # start_dockerd <extra flags>...: detached from this shell (own session,
  # stdin closed) so it outlives the script and the CI step that ran it.
  start_dockerd() {
    log "starting: dockerd --bridge=none --iptables=false${*:+ $*} (log: $DOCKERD_LOG)"
    (cd / && exec setsid nohup dockerd --bridge=none --iptables=false "$@" \
        >"$DOCKERD_LOG" 2>&1 </dev/null) &
    DOCKERD_PID=$!
  }

  started=0
  if [ -n "$(live_dockerds)" ]; then
    # A dockerd exists but does not answer yet (still starting?): don't start a
    # second one on the same data root, wait for it.
    log "a dockerd process exists but does not answer yet; waiting up to ${START_TIMEOUT}s"
    if wait_engine "existing dockerd"; then
      started=1
    elif [ -n "$(live_dockerds)" ]; then
      die "dockerd (pid $(live_dockerds | tr '\n' ' ')) is running but 'docker info' does not answer; stop it or check its log ($DOCKERD_LOG if this script started it)"
    fi
  fi
  if [ "$started" != 1 ]; then
    # A hard-killed dockerd (kill -9) leaves its pid file and its containerd's
    # behind, and both pids may still be unreaped zombies (init here reaps
    # lazily). dockerd counts a zombie as running: "pid file found" for
    # docker.pid, a 15 s "timeout waiting for containerd" for containerd.pid.
    # No live dockerd at this point; drop pid files naming no live process.
    for pidfile in /var/run/docker.pid /var/run/docker/containerd/containerd.pid; do
      [ -f "$pidfile" ] || continue
      pid="$(tr -dc 0-9 <"$pidfile" 2>/dev/null || true)"
      st="$( [ -n "$pid" ] && ps -o stat= -p "$pid" 2>/dev/null || true)"
      case "$st" in
        "") log "removing stale $pidfile (pid ${pid:-?} gone)"; rm -f "$pidfile" ;;
        Z*) log "removing stale $pidfile (pid $pid is a zombie)"; rm -f "$pidfile" ;;
      esac
    done
    start_dockerd
    if wait_engine "dockerd"; then
      started=1
    elif ! dockerd_alive \
        && awk 'tolower($0) ~ /level=(error|fatal)|failed to start daemon/ &&
                tolower($0) ~ /graphdriver|storage.driver|overlay/ &&
                tolower($0) !~ /several valid graphdrivers/ { f = 1 } END { exit !f }' "$DOCKERD_LOG"; then
      # Died during start-up over the storage driver (overlay2 unusable on this
      # filesystem, e.g. /var/lib/docker on overlayfs): vfs always works (slower,
      # more disk; fine for the 2 MB test image). Only for driver errors: a
      # second driver dir next to overlay2/ makes later plain starts fail.
      tail -n 15 "$DOCKERD_LOG" >&2 || true
      cp "$DOCKERD_LOG" "$DOCKERD_LOG.first" 2>/dev/null || true
      log "retrying with --storage-driver=vfs (first attempt's log: $DOCKERD_LOG.first)"
      start_dockerd --storage-driver=vfs
      wait_engine "dockerd (vfs)" && started=1
    fi
  fi
  if [ "$started" != 1 ]; then
    echo "---- tail of $DOCKERD_LOG ----" >&2
    tail -n 40 "$DOCKERD_LOG" >&2 || true
    die "dockerd did not come up (it exited, or gave no answer within ${START_TIMEOUT}s); full log: $DOCKERD_LOG"
  fi
  log "engine up: $(docker info --format '{{.ServerVersion}}, storage driver {{.Driver}}' 2>/dev/null)"
  CHANGED=1
fi

# ---------------------------------------------------------------- test image
image_current() {
  [ "$(docker image inspect -f "{{index .Config.Labels \"$IMAGE_LABEL\"}}" "$IMAGE" 2>/dev/null)" = "$IMAGE_REV" ]
}

if image_current; then
  log "$IMAGE present"
else
  # busybox-static's /bin/busybox is the static build (the plain busybox
  # package ships a dynamic one at the same path; the two conflict).
  if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
    apt_install "busybox-static missing (for $IMAGE)" busybox-static
  fi
  BB=/bin/busybox
  [ -x "$BB" ] || die "$BB missing although busybox-static is installed"
  if command -v ldd >/dev/null 2>&1 && ldd "$BB" 2>&1 | grep -q '=>'; then
    die "$BB is dynamically linked; reinstall busybox-static: apt-get install --reinstall busybox-static"
  fi

  TMP="$(mktemp -d)"
  trap 'rm -rf "$TMP"' EXIT
  RFS="$TMP/rootfs"
  mkdir -p "$RFS/bin" "$RFS/etc" "$RFS/proc" "$RFS/sys" "$RFS/dev" "$RFS/root"
  install -d -m 1777 "$RFS/tmp"
  cp "$BB" "$RFS/bin/busybox"
  # One /bin symlink per applet (sh, sleep, echo, cat, true, false, ls, env, kill, ...).
  while read -r applet; do
    case "$applet" in ""|busybox|*/*) continue ;; esac
    ln -sf busybox "$RFS/bin/$applet"
  done < <("$BB" --list)
  for need in sh sleep echo cat true false ls env kill; do
    [ -L "$RFS/bin/$need" ] || die "busybox at $BB lacks applet '$need'"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$RFS/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$RFS/etc/group"
  tar -C "$RFS" --numeric-owner --owner=0 --group=0 -cf "$TMP/rootfs.tar" .

  log "docker import $IMAGE (busybox $("$BB" 2>&1 | head -n1 | awk '{print $2}'))"
  docker import \
      --change 'CMD ["/bin/sh"]' \
      --change "LABEL $IMAGE_LABEL=$IMAGE_REV" \
      "$TMP/rootfs.tar" "$IMAGE" >/dev/null \
    || die "docker import of $IMAGE failed"
  image_current || die "$IMAGE imported but label $IMAGE_LABEL != $IMAGE_REV"
  CHANGED=1
fi

# ---------------------------------------------------------------- verify
out="$(timeout 30 docker run --rm --network none "$IMAGE" echo ok 2>&1)" || true
grep -qx ok <<<"$out" || die "'docker run --rm --network none $IMAGE echo ok' printed: $out (dockerd log: $DOCKERD_LOG)"

if [ "$CHANGED" = 1 ] || [ "$VERIFY" = 1 ]; then
  t0=$(date +%s%N)
  cid="$(timeout 30 docker run -d --network none "$IMAGE" sleep 1000)" \
    || die "'docker run -d --network none $IMAGE sleep 1000' failed"
  timeout 30 docker rm -f -v "$cid" >/dev/null || die "'docker rm -f -v $cid' failed"
  t1=$(date +%s%N)
  log "container run -d + rm -f: $(( (t1 - t0) / 1000000 )) ms"
fi

log "ready: engine $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})' 2>/dev/null), image $IMAGE"
