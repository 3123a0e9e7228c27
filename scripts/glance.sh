#!/usr/bin/env bash
# A private OpenStack Glance API for benchmark B7 (issue 8): Debian 12's glance-api (Zed), on
# loopback only, with its own configuration and nothing shared with /etc/glance's service.
#
#   bash scripts/glance.sh start    installs what is missing, writes the configuration, creates
#                                   the SQLite database and starts glance-api on a free port;
#                                   prints its URL (http://127.0.0.1:PORT) on stdout
#   bash scripts/glance.sh start --no-install
#                                   the same, but exits 3 when glance-api is not installed
#                                   (installing takes about 4 minutes on 2 cores)
#   bash scripts/glance.sh stop     stops the glance-api that `start` recorded, and only that one
#   bash scripts/glance.sh url      prints the URL of the running one (exit 1 when none runs)
#   bash scripts/glance.sh pids     prints the PIDs of its processes (the parent and its workers)
#   bash scripts/glance.sh install  only installs the packages
#
# The configuration: no Keystone (a paste pipeline that trusts the identity headers a client
# sends: X-Identity-Status: Confirmed, X-Project-Id, X-User-Id, X-Roles), a SQLite database, one
# file store, the staging and tasks stores that the interoperable import needs, glance-direct
# as the only import method, and the image_conversion import plugin converting every imported
# image to raw. Everything, images included, lives
# under $GLANCE_STATE_DIR (default /var/tmp/imagetransfer-glance). Runs as root. The port is
# $GLANCE_PORT or a free one. $GLANCE_WORKERS is glance-api's `workers` (default 0: one process
# serving everything, like `itx serve`, so its peak RSS compares directly; Debian's default is
# one worker per CPU forked from a parent, which roughly multiplies the summed RSS).
set -euo pipefail

STATE=${GLANCE_STATE_DIR:-/var/tmp/imagetransfer-glance}
IP=127.0.0.1
WORKERS=${GLANCE_WORKERS:-0}
CONF=$STATE/etc
LOG=$STATE/log
PIDFILE=$STATE/glance-api.pid
URLFILE=$STATE/url
PACKAGES=(glance-api python3-glance-store qemu-utils curl)

say() { echo "glance.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

missing_packages() {
  local pkg
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"
  done
  return 0
}

installed() { [[ -z $(missing_packages) ]]; }

install_packages() {
  local missing
  mapfile -t missing < <(missing_packages)
  ((${#missing[@]})) || return 0
  [[ $(id -u) == 0 ]] || die "run as root: glance-api is not installed and installing it needs root"
  mkdir -p "$LOG"
  say "installing ${missing[*]} (a minute or two: about 150 packages)"
  export DEBIAN_FRONTEND=noninteractive
  # The packages' debconf questions: no database, no RabbitMQ, no Keystone, no endpoint
  # registration (these are the defaults; set them so that an earlier answer cannot change it).
  debconf-set-selections <<'EOF'
glance-common glance/configure_db boolean false
glance-common glance/configure_rabbit boolean false
glance-common glance/configure_ksat boolean false
glance-api glance/configure_api-endpoint boolean false
EOF
  # Keep the package from starting Debian's own glance-api service on port 9292.
  local own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get -o DPkg::Lock::Timeout=600 update -qq >"$LOG/apt.log" 2>&1 || say "apt-get update had errors (see $LOG/apt.log)"
  if ! apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >>"$LOG/apt.log" 2>&1; then
    tail -20 "$LOG/apt.log" >&2
    die "apt-get install failed, see $LOG/apt.log"
  fi
  if ((own_policy)); then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    systemctl disable --now glance-api.service >/dev/null 2>&1 || true
  fi
}

# Whether the recorded PID is alive and is still a glance-api.
alive() {
  local pid stat
  [[ -f $PIDFILE ]] || return 1
  pid=$(<"$PIDFILE")
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "glance-api"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

write_configs() {  # write_configs PORT
  local port=$1
  mkdir -p "$CONF" "$LOG" "$STATE/images" "$STATE/staging" "$STATE/tasks" "$STATE/cache"
  # The package's paste pipelines, plus one without Keystone that takes the caller's identity
  # from the headers keystonemiddleware would set (X-Identity-Status: Confirmed, X-Project-Id,
  # X-User-Id, X-Roles). The package's own no-auth pipeline gives requests no project, and the
  # import task then fails to save (tasks.owner may not be NULL). Safe only on loopback.
  cp /etc/glance/glance-api-paste.ini "$CONF/glance-api-paste.ini"
  cat >>"$CONF/glance-api-paste.ini" <<'PASTE'

[pipeline:glance-api-trusted]
pipeline = cors healthcheck http_proxy_to_wsgi versionnegotiation osprofiler context rootapp
PASTE
  cat >"$CONF/glance-api.conf" <<EOF
[DEFAULT]
bind_host = $IP
bind_port = $port
workers = $WORKERS
log_file = $LOG/glance-api.log
use_stderr = false
enabled_backends = fs:file
enabled_import_methods = [glance-direct]
image_cache_dir = $STATE/cache

[database]
connection = sqlite:///$STATE/glance.sqlite

[paste_deploy]
config_file = $CONF/glance-api-paste.ini
flavor = trusted

[glance_store]
default_backend = fs

[fs]
filesystem_store_datadir = $STATE/images/

[os_glance_staging_store]
filesystem_store_datadir = $STATE/staging/

[os_glance_tasks_store]
filesystem_store_datadir = $STATE/tasks/

[oslo_policy]
enforce_scope = false
enforce_new_defaults = false

[oslo_concurrency]
lock_path = $STATE/lock
EOF
  cat >"$CONF/glance-image-import.conf" <<EOF
[image_import_opts]
image_import_plugins = ['image_conversion']

[image_conversion]
output_format = raw
EOF
}

wait_ready() {  # wait_ready URL
  local i
  for i in $(seq 1 300); do
    curl -fsS -m 2 -o /dev/null "$1/healthcheck" 2>/dev/null && return 0
    curl -fsS -m 2 -o /dev/null "$1/versions" 2>/dev/null && return 0
    alive || { tail -30 "$LOG/glance-api.log" "$LOG/glance-api.out" >&2 2>/dev/null; die "glance-api exited while starting (see $LOG)"; }
    sleep 0.2
  done
  tail -30 "$LOG/glance-api.log" >&2 2>/dev/null
  die "glance-api did not answer at $1 within 60 s"
}

start() {
  if alive && [[ -f $URLFILE ]]; then
    say "already running (pid $(<"$PIDFILE"))"
    cat "$URLFILE"
    return 0
  fi
  stop >/dev/null
  [[ $(id -u) == 0 ]] || die "run as root"
  if [[ ${1:-} == --no-install ]]; then
    installed || { say "glance-api is not installed (bash scripts/glance.sh install, about 4 minutes)"; exit 3; }
  else
    install_packages
  fi
  local port=${GLANCE_PORT:-$(free_port)}
  write_configs "$port"
  # A fresh database and stores each start: the benchmark's images do not outlive a run.
  rm -rf "$STATE/glance.sqlite" "$STATE/images"/* "$STATE/staging"/* "$STATE/tasks"/*
  # db_sync takes 15-30 s here, so the empty schema is kept per package version and copied.
  local version empty
  version=$(dpkg-query -W -f='${Version}' glance-common 2>/dev/null | tr -c 'A-Za-z0-9.+~\n-' _)
  empty=$STATE/empty-schema-$version.sqlite
  if [[ ! -s $empty ]]; then
    glance-manage --config-file "$CONF/glance-api.conf" db_sync >"$LOG/db_sync.log" 2>&1 ||
      { tail -20 "$LOG/db_sync.log" >&2; die "glance-manage db_sync failed (see $LOG/db_sync.log)"; }
    rm -f "$STATE"/empty-schema-*.sqlite
    cp "$STATE/glance.sqlite" "$empty.tmp" && mv "$empty.tmp" "$empty"
  else
    cp "$empty" "$STATE/glance.sqlite"
  fi
  # Each start's log only (the stores are fresh too).
  : >"$LOG/glance-api.log"
  : >"$LOG/glance-api.out"
  # 9>&-: the server must not hold the start/stop lock.
  setsid glance-api --config-file "$CONF/glance-api.conf" --config-file "$CONF/glance-image-import.conf" \
    </dev/null >>"$LOG/glance-api.out" 2>&1 9>&- &
  echo $! >"$PIDFILE"
  local url="http://$IP:$port"
  wait_ready "$url"
  echo "$url" >"$URLFILE"
  say "ready at $url (pid $(<"$PIDFILE"), logs in $LOG)"
  echo "$url"
}

# Fields of /proc/PID/stat after "(comm)": 1 = state, 4 = session id.
stat_field() {
  local stat fields
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  read -ra fields <<<"${stat##*) }"
  echo "${fields[$2 - 1]}"
}

# glance-api forks its workers (and qemu-img) into the session that setsid made; its id is the
# PID we recorded, so they are found without matching on names.
session_members() {
  local dir pid
  for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    [[ $(stat_field "$pid" 4 2>/dev/null) == "$1" && $(stat_field "$pid" 1 2>/dev/null) != Z ]] && echo "$pid"
  done
  return 0
}

pids() {
  alive || return 1
  session_members "$(<"$PIDFILE")"
}

stop() {
  [[ -f $PIDFILE ]] || return 0
  local pid i left
  pid=$(<"$PIDFILE")
  if alive; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do alive || break; sleep 0.1; done
    alive && kill -KILL "$pid" 2>/dev/null
    for i in $(seq 1 10); do
      left=$(session_members "$pid")
      [[ -z $left ]] && break
      # shellcheck disable=SC2086
      ((i >= 5)) && kill -KILL $left 2>/dev/null
      sleep 0.2
    done
    say "stopped glance-api (pid $pid)"
  fi
  rm -f "$PIDFILE" "$URLFILE"
}

mkdir -p "$STATE"
case "${1:-}" in
  start | stop)
    exec 9>"$STATE/lock-startstop"
    flock 9
    "$@"
    ;;
  url) alive && [[ -f $URLFILE ]] && cat "$URLFILE" ;;
  pids) pids ;;
  install) install_packages ;;
  *)
    echo "usage: bash scripts/glance.sh start [--no-install]|stop|url|pids|install" >&2
    exit 2
    ;;
esac
