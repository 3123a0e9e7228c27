#!/usr/bin/env bash
# A real OpenStack Swift for the tests: an all-in-one from Debian 12's packages, on loopback only.
#
#   bash scripts/swift.sh start   installs what is missing, starts the servers; prints "started"
#                                 on stdout, or "running" when ours are already up
#   bash scripts/swift.sh start --for PID
#                                 the same, for a test run (process PID) that shares Swift with
#                                 other runs; a Swift that a test run started is stopped by
#   bash scripts/swift.sh release PID
#                                 when the last run using it releases it (a Swift started by
#                                 hand is left running)
#   bash scripts/swift.sh stop    stops the processes that `start` recorded, and only those
#   bash scripts/swift.sh env     prints `export NAME=VALUE` lines for the tests and the S3 SDK
#
# One proxy (tempauth, tempurl with SHA-256/SHA-512 only, s3api, slo), one account, container
# and object server, one replica on a plain directory, and a memcached for tempauth's tokens.
# Runs as root (it installs packages and the servers drop to the "swift" user). State, rings,
# logs and PID files live under $SWIFT_STATE_DIR (default /var/tmp/imagetransfer-swift).
# The ports differ from the usual SAIO ones so a developer's own Swift can run beside it.
set -euo pipefail

STATE=${SWIFT_STATE_DIR:-/var/tmp/imagetransfer-swift}
IP=127.0.0.1
PROXY_PORT=${SWIFT_PROXY_PORT:-18580}
OBJECT_PORT=${SWIFT_OBJECT_PORT:-16200}
CONTAINER_PORT=${SWIFT_CONTAINER_PORT:-16201}
ACCOUNT_PORT=${SWIFT_ACCOUNT_PORT:-16202}
MEMCACHED_PORT=${SWIFT_MEMCACHED_PORT:-11311}

# tempauth users: "account:user" / key. The tester is an account admin (it may set the
# account's Temp-URL-Key and create containers); the reader has no rights at all, for the
# permission-failure tests. The tester's pair is also its S3 access key / secret key.
ACCOUNT=test
TESTER_KEY=testing
READER_KEY=reading
S3_REGION=us-east-1

CONF=$STATE/etc        # our server configs and rings (the servers' swift_dir)
DEVICES=$STATE/srv     # one device, $DEVICES/d1, on a plain directory
RUN=$STATE/run         # PID files of what we started
USERS=$STATE/users     # one file per test run (its PID) using this Swift
LOG=$STATE/log         # server output (servers log to syslog unless run with -v)
PY=/usr/bin/python3    # Debian's python: a venv's python3 has no swift module

PACKAGES=(swift swift-proxy swift-account swift-container swift-object memcached python3-swiftclient curl)
# memcached last: the Swift servers are stopped before the cache they use.
SERVERS=(account container object proxy container-updater object-updater memcached)

say() { echo "swift.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

# Whether the process in run/NAME.pid is alive and is still the one we started.
alive() {
  local file=$RUN/$1.pid pid stat
  [[ -f $file ]] || return 1
  pid=$(<"$file")
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qE "swift-|memcached"
}

port_busy() { (exec 3<>"/dev/tcp/$IP/$1") 2>/dev/null; }

print_env() {
  cat <<EOF
export SWIFT_AUTH_URL=http://$IP:$PROXY_PORT/auth/v1.0
export SWIFT_USER=$ACCOUNT:tester
export SWIFT_KEY=$TESTER_KEY
export SWIFT_READER_USER=$ACCOUNT:reader
export SWIFT_READER_KEY=$READER_KEY
export SWIFT_STORAGE_URL=http://$IP:$PROXY_PORT/v1/AUTH_$ACCOUNT
export S3_ENDPOINT=http://$IP:$PROXY_PORT
export S3_REGION=$S3_REGION
export S3_ACCESS_KEY_ID=$ACCOUNT:tester
export S3_SECRET_ACCESS_KEY=$TESTER_KEY
EOF
}

install_packages() {
  local missing=() pkg
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  say "installing ${missing[*]} (about half a minute)"
  export DEBIAN_FRONTEND=noninteractive
  # Keep the packages' maintainer scripts from starting Debian's own memcached and Swift
  # services, which would take the default ports with /etc/swift's configs.
  local own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  # A broken extra package source must not stop us: only the install's result counts.
  apt-get -o DPkg::Lock::Timeout=600 update -qq >"$LOG/apt.log" 2>&1 || say "apt-get update had errors (see $LOG/apt.log)"
  if ! apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >>"$LOG/apt.log" 2>&1; then
    tail -20 "$LOG/apt.log" >&2
    die "apt-get install failed, see $LOG/apt.log"
  fi
  if ((own_policy)); then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
  # On a systemd machine the packages enable their units for the next boot; disable them.
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    systemctl list-unit-files --no-legend 'swift*.service' 'memcached.service' 2>/dev/null | awk '{print $1}' |
      xargs -r systemctl disable --now >/dev/null 2>&1 || true
  fi
}

# /etc/swift/swift.conf is the one file Swift reads from a fixed path, shared by every Swift on
# the machine. Its hash prefix and suffix must never change while any of them holds data, so
# an existing, configured one is kept; only the packages' placeholder is replaced.
write_swift_conf() {
  if [[ -f /etc/swift/swift.conf ]] && ! grep -qE '^swift_hash_path_(suffix|prefix) *= *changeme' /etc/swift/swift.conf &&
    grep -qE '^swift_hash_path_suffix *= *[^ ]' /etc/swift/swift.conf; then
    return 0
  fi
  mkdir -p /etc/swift
  cat >/etc/swift/swift.conf <<'EOF'
[swift-hash]
swift_hash_path_prefix = imagetransfer-test-prefix
swift_hash_path_suffix = imagetransfer-test-suffix

[storage-policy:0]
name = Policy-0
default = yes

[swift-constraints]
# ext4 keeps an inode's extended attributes in about 4 KiB, which Swift's own metadata
# shares with user metadata: the default 4096 bytes of user metadata fail there with 503.
max_meta_overall_size = 2048
EOF
}

# The user metadata check: Swift keeps object metadata in user.* xattrs.
check_xattrs() {
  "$PY" - "$DEVICES/d1" <<'EOF' || die "the file system under $DEVICES does not support user extended attributes"
import os, sys, tempfile
fd, path = tempfile.mkstemp(dir=sys.argv[1])
try:
    os.setxattr(path, "user.swift.metadata", b"x" * 254)
    assert os.getxattr(path, "user.swift.metadata") == b"x" * 254
finally:
    os.close(fd)
    os.unlink(path)
EOF
}

server_conf() {  # server_conf KIND PORT [extra lines]
  cat <<EOF
[DEFAULT]
bind_ip = $IP
bind_port = $2
workers = 1
user = swift
swift_dir = $CONF
devices = $DEVICES
mount_check = false

[pipeline:main]
pipeline = healthcheck $1-server

[app:$1-server]
use = egg:swift#$1

[filter:healthcheck]
use = egg:swift#healthcheck
${3:-}
EOF
}

write_configs() {
  server_conf account "$ACCOUNT_PORT" >"$CONF/account-server.conf"
  # The container updater only refreshes the account's per-container counts, which nothing here
  # reads; every 30 s it swept every container the tests had made, a core's worth of CPU once
  # there were a few hundred: hourly keeps it from competing with the tests and benches.
  server_conf container "$CONTAINER_PORT" "
[container-updater]
interval = 3600
concurrency = 1
recon_cache_path = $STATE/cache" >"$CONF/container-server.conf"
  server_conf object "$OBJECT_PORT" "
[object-updater]
interval = 30
concurrency = 1
recon_cache_path = $STATE/cache" >"$CONF/object-server.conf"

  # tempurl and s3api must come before tempauth; slo serves both our large objects and
  # s3api's multipart uploads.
  cat >"$CONF/proxy-server.conf" <<EOF
[DEFAULT]
bind_ip = $IP
bind_port = $PROXY_PORT
workers = 2
user = swift
swift_dir = $CONF

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl s3api tempauth copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
# With a single object server, error-limiting it after one failure would turn every
# request into a 503 for a minute.
error_suppression_interval = 0

[filter:tempauth]
use = egg:swift#tempauth
user_${ACCOUNT}_tester = $TESTER_KEY .admin
user_${ACCOUNT}_reader = $READER_KEY

[filter:tempurl]
use = egg:swift#tempurl
# Never SHA-1.
allowed_digests = sha256 sha512

[filter:s3api]
use = egg:swift#s3api
location = $S3_REGION

[filter:cache]
use = egg:swift#memcache
memcache_servers = $IP:$MEMCACHED_PORT

[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
EOF
}

# One replica on one device: every partition lives on d1, so rebuilding the rings at each
# start keeps old data reachable. Swift's Python API is much faster than nine
# swift-ring-builder runs.
build_rings() {
  rm -f "$CONF"/*.builder "$CONF"/*.ring.gz
  rm -rf "$CONF/backups"
  "$PY" - "$CONF" "$IP" "$ACCOUNT_PORT" "$CONTAINER_PORT" "$OBJECT_PORT" <<'EOF' || die "building the rings failed"
import os, sys
from swift.common.ring import RingBuilder
conf, ip, ports = sys.argv[1], sys.argv[2], sys.argv[3:]
for name, port in zip(("account", "container", "object"), ports):
    builder = RingBuilder(10, 1, 1)  # 2^10 partitions, 1 replica, min_part_hours 1
    builder.add_dev({"region": 1, "zone": 1, "ip": ip, "port": int(port), "device": "d1", "weight": 100})
    builder.rebalance()
    builder.save(os.path.join(conf, name + ".builder"))
    builder.get_ring().save(os.path.join(conf, name + ".ring.gz"))
EOF
}

launch() {  # launch NAME COMMAND...: in its own session, output to the log, PID recorded
  local name=$1
  shift
  # 9>&-: the servers must not hold the start/stop lock.
  setsid "$@" </dev/null >>"$LOG/$name.log" 2>&1 9>&- &
  echo $! >"$RUN/$name.pid"
}

wait_healthy() {  # wait_healthy NAME PORT
  local i
  for i in $(seq 1 300); do
    curl -fsS -m 2 -o /dev/null "http://$IP:$2/healthcheck" 2>/dev/null && return 0
    alive "$1" || { tail -20 "$LOG/$1.log" >&2; die "$1 exited while starting (see $LOG/$1.log)"; }
    sleep 0.2
  done
  tail -20 "$LOG/$1.log" >&2
  die "$1 did not answer on port $2 within 60 s"
}

start() {
  local user=""
  if [[ ${1:-} == --for ]]; then
    user=${2:?start --for needs a PID}
    mkdir -p "$USERS"
    touch "$USERS/$user"
  fi
  if alive proxy && alive account && alive container && alive object && alive memcached; then
    say "already running (proxy on $IP:$PROXY_PORT)"
    echo running
    return 0
  fi
  # Half-started leftovers of an earlier run go first.
  stop >/dev/null
  [[ $(id -u) == 0 ]] || die "run as root: it installs packages and starts servers as the swift user"
  local port
  for port in "$PROXY_PORT" "$OBJECT_PORT" "$CONTAINER_PORT" "$ACCOUNT_PORT" "$MEMCACHED_PORT"; do
    port_busy "$port" && die "port $IP:$port is already in use by something else"
  done
  mkdir -p "$CONF" "$DEVICES/d1" "$RUN" "$LOG" "$STATE/cache"
  install_packages
  id swift >/dev/null 2>&1 || die "the swift user is missing (it comes with the swift package)"
  chown -R swift:swift "$DEVICES" "$STATE/cache"
  check_xattrs
  write_swift_conf
  write_configs
  build_rings

  launch memcached memcached -u memcache -l "$IP" -p "$MEMCACHED_PORT" -U 0 -m 64
  launch account swift-account-server "$CONF/account-server.conf" -v
  launch container swift-container-server "$CONF/container-server.conf" -v
  launch object swift-object-server "$CONF/object-server.conf" -v
  launch proxy swift-proxy-server "$CONF/proxy-server.conf" -v
  launch container-updater swift-container-updater "$CONF/container-server.conf" -v
  launch object-updater swift-object-updater "$CONF/object-server.conf" -v
  wait_healthy account "$ACCOUNT_PORT"
  wait_healthy container "$CONTAINER_PORT"
  wait_healthy object "$OBJECT_PORT"
  wait_healthy proxy "$PROXY_PORT"

  # End to end: a tempauth token, then the account answers with it.
  local headers token code
  headers=$(curl -fsS -m 10 -D - -o /dev/null -H "X-Auth-User: $ACCOUNT:tester" -H "X-Auth-Key: $TESTER_KEY" \
    "http://$IP:$PROXY_PORT/auth/v1.0") || die "tempauth refused the tester"
  token=$(printf '%s' "$headers" | tr -d '\r' | awk -F': ' 'tolower($1) == "x-auth-token" { print $2 }')
  code=$(curl -sS -m 10 -o /dev/null -w '%{http_code}' -I -H "X-Auth-Token: $token" "http://$IP:$PROXY_PORT/v1/AUTH_$ACCOUNT")
  [[ $code == 2?? ]] || die "the account answered HEAD with $code"
  [[ -z $user ]] || touch "$RUN/started-for-tests"
  say "ready on http://$IP:$PROXY_PORT (logs in $LOG)"
  echo started
}

release() {
  local user=${1:?release needs the PID given to start --for} file
  rm -f "$USERS/$user"
  for file in "$USERS"/*; do
    [[ -e $file ]] || continue
    [[ $(stat_field "${file##*/}" 1 2>/dev/null) =~ ^[^Z]$ ]] && return 0 # another run still uses it
    rm -f "$file"
  done
  [[ -e $RUN/started-for-tests ]] && stop
  return 0
}

# Fields of /proc/PID/stat after "(comm)": 1 = state, 4 = session id.
stat_field() {
  local stat fields
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  read -ra fields <<<"${stat##*) }"
  echo "${fields[$2 - 1]}"
}

# Swift servers fork workers into the session the launcher's setsid made; the session id is
# the PID we recorded, so the workers can be found without matching on names.
session_members() {
  local dir pid
  for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    [[ $(stat_field "$pid" 4 2>/dev/null) == "$1" && $(stat_field "$pid" 1 2>/dev/null) != Z ]] && echo "$pid"
  done
  return 0
}

stop_one() {
  local name=$1 file=$RUN/$1.pid pid i left
  [[ -f $file ]] || return 0
  pid=$(<"$file")
  if alive "$name"; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do alive "$name" || break; sleep 0.1; done
    alive "$name" && kill -KILL "$pid" 2>/dev/null
    for i in $(seq 1 10); do
      left=$(session_members "$pid")
      [[ -z $left ]] && break
      # shellcheck disable=SC2086
      ((i >= 5)) && kill -KILL $left 2>/dev/null
      sleep 0.2
    done
    say "stopped $name (pid $pid)"
  fi
  rm -f "$file"
}

stop() {
  local name
  for name in "${SERVERS[@]}"; do stop_one "$name"; done
  rm -f "$RUN/started-for-tests"
}

mkdir -p "$STATE"
case "${1:-}" in
  start | stop | release)
    # One start, stop or release at a time (several test runs may share the machine).
    exec 9>"$STATE/lock"
    flock 9
    mkdir -p "$RUN" "$LOG"
    "$@"
    ;;
  env) print_env ;;
  *) die "usage: $0 start [--for PID] | release PID | stop | env" ;;
esac
