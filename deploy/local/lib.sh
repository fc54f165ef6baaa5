# shellcheck shell=bash
# Helpers shared by the deploy/local scripts. Source it; do not run it.
#
# Everything the local services need lives under WAFUNNEL_LOCAL
# (default: <repo>/.local, which .gitignore already ignores).

DEPLOY_LOCAL_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$DEPLOY_LOCAL_DIR/../.." && pwd)"
WAFUNNEL_LOCAL="${WAFUNNEL_LOCAL:-$REPO_ROOT/.local}"
export WAFUNNEL_LOCAL

# Messages go to stderr so that stdout stays clean for `eval "$(up.sh)"`.
log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

need_cmd() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || die "'$c' is required but not on PATH"
  done
}

# tcp_open HOST PORT: true if something accepts TCP connections there.
tcp_open() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# proc_running PID: true while PID exists and is not a zombie.
proc_running() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]]
}

# pid_of PIDFILE PATTERN: prints the pid recorded in PIDFILE if that process
# is alive and its command line contains PATTERN (guards against pid reuse).
# Returns 1 otherwise.
pid_of() {
  local pidfile=$1 pattern=$2 pid
  [[ -s $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  proc_running "$pid" || return 1
  local cmdline
  # Not `tr | grep -q`: with pipefail, grep -q's early exit fails tr (SIGPIPE).
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *"$pattern"* ]] || return 1
  printf '%s\n' "$pid"
}

# stop_pidfile PIDFILE PATTERN TIMEOUT_SECONDS NAME: SIGTERM the recorded
# process (only that pid), wait for it to exit, SIGKILL after the timeout.
stop_pidfile() {
  local pidfile=$1 pattern=$2 timeout=$3 name=$4 pid waited=0
  if ! pid=$(pid_of "$pidfile" "$pattern"); then
    rm -f "$pidfile"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  while proc_running "$pid" && ((waited < timeout * 10)); do
    sleep 0.1
    waited=$((waited + 1))
  done
  if proc_running "$pid"; then
    log "$name (pid $pid) did not exit within ${timeout}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    waited=0
    while proc_running "$pid" && ((waited < 100)); do
      sleep 0.1
      waited=$((waited + 1))
    done
    ! proc_running "$pid" || die "$name (pid $pid) survived SIGKILL"
  fi
  rm -f "$pidfile"
}

# show_log_tail FILE [LINES]: print the end of a log file to stderr.
show_log_tail() {
  local f=$1 n=${2:-40}
  if [[ -s $f ]]; then
    printf -- '----- last %s lines of %s -----\n' "$n" "$f" >&2
    tail -n "$n" "$f" >&2
    printf -- '-----\n' >&2
  fi
}

# take_lock FILE: serialise concurrent start/stop of one service (fd 9).
# Children must be started with 9>&- so they do not inherit the lock.
take_lock() {
  mkdir -p "$(dirname "$1")"
  exec 9>"$1"
  flock -w 300 9 || die "timed out waiting for lock $1"
}
