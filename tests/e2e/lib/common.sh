# Shared helpers for tests/e2e/services. Sourced, never run.
#
# Layout (all outside the clone):
#   $STRAIT_CACHE                 ~/.cache/strait: downloads and builds, keyed by version
#   $STRAIT_STATE                 $STRAIT_CACHE/state: one directory per running service
#   $STRAIT_STATE/<svc>/pids      PIDs this script started, one per line (down kills exactly these)
#   $STRAIT_STATE/<svc>/env       `export NAME=value` lines printed by `services env`
#   $STRAIT_STATE/<svc>/*.log     service logs
set -euo pipefail

STRAIT_CACHE=${STRAIT_CACHE:-$HOME/.cache/strait}
STRAIT_STATE=${STRAIT_STATE:-$STRAIT_CACHE/state}
export STRAIT_CACHE STRAIT_STATE

log() { printf '[services %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# A free TCP port on 127.0.0.1 (the kernel picks it; a tiny race is acceptable for tests).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_for SECONDS DESCRIPTION CMD...: poll CMD every 0.5 s until it succeeds or the deadline passes.
wait_for() {
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${secs}s waiting for $what"
      return 1
    fi
    sleep 0.5
  done
}

svc_dir() { printf '%s/%s' "$STRAIT_STATE" "$1"; }

# start_bg SVC NAME CMD...: run CMD detached (own session, so `down` can kill its process group),
# logs to $STRAIT_STATE/SVC/NAME.log, PID recorded in $STRAIT_STATE/SVC/pids.
start_bg() {
  local svc=$1 name=$2; shift 2
  local dir; dir=$(svc_dir "$svc"); mkdir -p "$dir"
  setsid "$@" </dev/null >"$dir/$name.log" 2>&1 &
  local pid=$!
  echo "$pid" >>"$dir/pids"
  log "$svc: started $name (pid $pid, log $dir/$name.log)"
}

# pid_alive PID: the process exists and is not a zombie.
pid_alive() { [ -e "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }

# stop_svc SVC: stop the recorded process groups newest first (TERM, up to 15 s each, then
# KILL), so a service's clients stop before its servers (kube-apiserver before etcd: stopping
# all at once leaves etcd waiting on watches); remove the pid and env files.
stop_svc() {
  local svc=$1 dir pids=() pid i
  dir=$(svc_dir "$svc")
  [ -f "$dir/pids" ] || return 0
  mapfile -t pids <"$dir/pids"
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid=${pids[i]}
    pid_alive "$pid" || continue
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 15))
    while pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    if pid_alive "$pid"; then
      log "$svc: pid $pid ignored TERM, killing"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  rm -f "$dir/pids" "$dir/env"
  log "$svc: stopped"
}

# svc_running SVC: every recorded PID is alive.
svc_running() {
  local dir pid; dir=$(svc_dir "$1")
  [ -s "$dir/pids" ] || return 1
  while read -r pid; do pid_alive "$pid" || return 1; done <"$dir/pids"
}

# write_env SVC NAME=VALUE...: record the service's environment for `services env`.
write_env() {
  local svc=$1; shift
  local dir kv; dir=$(svc_dir "$svc"); mkdir -p "$dir"
  : >"$dir/env"
  for kv in "$@"; do printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}" >>"$dir/env"; done
}

# need_cmd CMD HINT: fail with a clear message when a prerequisite is missing.
need_cmd() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found: $2"; }

# apt_install PKG...: install Debian packages (we run as root on the project's machines).
# apt's chatter goes to $STRAIT_STATE/apt.log and is shown only when it fails.
apt_install() {
  local sudo="" aptlog="$STRAIT_STATE/apt.log"
  [ "$(id -u)" = 0 ] || sudo=sudo
  mkdir -p "$STRAIT_STATE"
  if [ ! -f "$STRAIT_STATE/.apt-updated" ]; then
    $sudo apt-get update >>"$aptlog" 2>&1 || { tail -n 20 "$aptlog" >&2; die "apt-get update failed"; }
    touch "$STRAIT_STATE/.apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "$@" >>"$aptlog" 2>&1 \
    || { tail -n 20 "$aptlog" >&2; die "apt-get install $* failed (log: $aptlog)"; }
}
