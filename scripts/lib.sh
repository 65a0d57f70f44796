# Shared helpers of reapkit's set-up scripts. Source it after setting SCRIPT_NAME.
# Everything goes to stderr: setup.sh's stdout is reserved for the servers.env lines.

log() { echo "$SCRIPT_NAME: $*" >&2; }
die() { echo "$SCRIPT_NAME: ERROR: $*" >&2; exit 1; }

APT_UPDATED=0
# apt_install <why> <pkg>...: installs Debian packages as root, running `apt-get update` once.
apt_install() {
  local why="$1"; shift
  if [ "$(id -u)" != 0 ]; then
    die "$why: not root, cannot apt-get install. Run: sudo apt-get update && sudo apt-get install -y $*"
  fi
  command -v apt-get >/dev/null 2>&1 || die "$why: apt-get not available; install these yourself: $*"
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    apt-get update -qq >&2 || die "apt-get update failed (network to Debian mirrors?)"
    APT_UPDATED=1
  fi
  log "apt-get install $* ($why)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed"
}
