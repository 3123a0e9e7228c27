#!/usr/bin/env bash
# A real OpenStack Keystone for the tests, and a second Swift proxy that trusts it: Debian 12's
# keystone (Zed) under uWSGI, and a swift-proxy-server with authtoken + keystoneauth in front of
# the shared test Swift's account, container and object servers (scripts/swift.sh). Loopback only.
#
#   bash scripts/keystone.sh start   installs what is missing, starts Keystone and the proxy;
#                                    prints "started" on stdout, or "running" when ours are up
#   bash scripts/keystone.sh start --for PID
#                                    the same, for a test run (process PID); also registers PID
#                                    with scripts/swift.sh (starting Swift if it is not running)
#   bash scripts/keystone.sh release PID
#                                    the last run to release stops what a test run started, and
#                                    releases Swift for PID
#   bash scripts/keystone.sh stop    stops the processes that `start` recorded, and only those
#   bash scripts/keystone.sh env     prints `export NAME=VALUE` lines for the tests
#
# Keystone: SQLite database, fernet tokens, everything under $KEYSTONE_STATE_DIR (default
# /var/tmp/imagetransfer-keystone). The first start installs the packages and creates the
# database and the accounts (70-130 s on a busy 2-core machine); later starts reuse them and
# only start the processes (12-16 s, mostly Keystone importing itself). The database and the
# catalog are made for the ports of the first start: after changing a port, delete the state
# directory. Accounts:
#   admin / admin project     the bootstrap admin
#   swift / service project   the proxy's own user, which validates the tokens it is shown
#   tester / imagetransfer    the tests' user: role "member", one of the proxy's operator_roles,
#                             so it owns the project's Swift account AUTH_<project id>
# The catalog's object-store endpoint is this proxy: http://127.0.0.1:18581/v1/AUTH_%(tenant_id)s
# Runs as root (it installs packages; Keystone runs as the keystone user, the proxy as swift).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${KEYSTONE_STATE_DIR:-/var/tmp/imagetransfer-keystone}
SWIFT_STATE=${SWIFT_STATE_DIR:-/var/tmp/imagetransfer-swift}
IP=127.0.0.1
KEYSTONE_PORT=${KEYSTONE_PORT:-15000}
PROXY_PORT=${KEYSTONE_SWIFT_PROXY_PORT:-18581}
# The shared Swift's backend servers (scripts/swift.sh's defaults).
BACKEND_PORTS=(${SWIFT_OBJECT_PORT:-16200} ${SWIFT_CONTAINER_PORT:-16201} ${SWIFT_ACCOUNT_PORT:-16202})
REGION=RegionOne

ADMIN_PASSWORD=admin-secret
SERVICE_PASSWORD=swift-secret
TEST_USER=tester
TEST_PASSWORD=testing-secret
TEST_PROJECT=imagetransfer

CONF=$STATE/etc
RUN=$STATE/run
USERS=$STATE/users
LOG=$STATE/log
PY=/usr/bin/python3  # Debian's python: a venv's python3 has no keystone or swift module

PACKAGES=(keystone python3-keystonemiddleware python3-keystoneclient uwsgi-core uwsgi-plugin-python3 swift-proxy curl)
SERVERS=(proxy keystone)

say() { echo "keystone.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

# Whether the process in run/NAME.pid is alive and is still the one we started.
alive() {
  local file=$RUN/$1.pid pid stat
  [[ -f $file ]] || return 1
  pid=$(<"$file")
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qE "swift-proxy|uwsgi"
}

port_busy() { (exec 3<>"/dev/tcp/$IP/$1") 2>/dev/null; }

print_env() {
  cat <<EOF
export KEYSTONE_AUTH_URL=http://$IP:$KEYSTONE_PORT/v3
export KEYSTONE_USER=$TEST_USER
export KEYSTONE_PASSWORD=$TEST_PASSWORD
export KEYSTONE_PROJECT=$TEST_PROJECT
export KEYSTONE_DOMAIN=Default
export KEYSTONE_ADMIN_USER=admin
export KEYSTONE_ADMIN_PASSWORD=$ADMIN_PASSWORD
export KEYSTONE_ADMIN_PROJECT=admin
export KEYSTONE_SWIFT_URL=http://$IP:$PROXY_PORT
export KEYSTONE_SWIFT_LOG=$LOG/proxy.log
EOF
}

missing_packages() {
  local pkg
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"
  done
  return 0
}

install_packages() {
  local missing
  mapfile -t missing < <(missing_packages)
  ((${#missing[@]})) || return 0
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The package's debconf questions: no database setup (dbconfig-common), no admin project,
  # no endpoint registration; we configure our own Keystone under $STATE instead.
  debconf-set-selections <<'EOF'
keystone keystone/configure_db boolean false
keystone keystone/create-admin-tenant boolean false
keystone keystone/register-endpoint boolean false
EOF
  # Keep the package from starting Debian's own keystone service on port 5000.
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
  # On a systemd machine the package enables its unit for the next boot; disable it.
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    systemctl disable --now keystone.service >/dev/null 2>&1 || true
  fi
}

write_configs() {
  mkdir -p "$CONF"
  cat >"$CONF/keystone.conf" <<EOF
[DEFAULT]
log_dir = $LOG
log_file = keystone-app.log
use_stderr = false

[database]
connection = sqlite:///$STATE/keystone.sqlite

[token]
provider = fernet
expiration = 3600

[fernet_tokens]
key_repository = $STATE/fernet-keys

[credential]
key_repository = $STATE/credential-keys

# An in-process cache (validating a token took seconds on a busy 2-core machine without it).
# One uWSGI process, so that a revocation clears the only cache there is.
[cache]
enabled = true
backend = dogpile.cache.memory

[oslo_policy]
# The package's policy.d holds only commented-out defaults; the defaults in code apply.
policy_dirs = $CONF/policy.d
EOF
  mkdir -p "$CONF/policy.d"

  # The shared Swift's rings and hash settings (/etc/swift/swift.conf), a proxy of our own.
  # The rings are copied so that a Swift restart rebuilding them under us does no harm.
  cp "$SWIFT_STATE/etc/"{account,container,object}.ring.gz "$CONF/"
  cat >"$CONF/proxy-server.conf" <<EOF
[DEFAULT]
bind_ip = $IP
bind_port = $PROXY_PORT
workers = 1
user = swift
swift_dir = $CONF

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging listing_formats bulk tempurl authtoken keystoneauth copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
error_suppression_interval = 0

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
www_authenticate_uri = http://$IP:$KEYSTONE_PORT/v3
auth_url = http://$IP:$KEYSTONE_PORT/v3
auth_type = password
username = swift
password = $SERVICE_PASSWORD
project_name = service
user_domain_id = default
project_domain_id = default
# tempurl requests carry no token: keystoneauth decides on them.
delay_auth_decision = true
# No cache of validated tokens: a token revoked in Keystone is refused at once.
token_cache_time = -1
include_service_catalog = false

[filter:keystoneauth]
use = egg:swift#keystoneauth
# The tests' user has "member" on its project, which makes it the owner of AUTH_<project id>.
operator_roles = admin, member

[filter:tempurl]
use = egg:swift#tempurl
allowed_digests = sha256 sha512

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

# As the keystone user: the keys, database and log it writes must be the server's.
manage() { runuser -u keystone -- keystone-manage --config-file "$CONF/keystone.conf" "$@" >>"$LOG/keystone-manage.log" 2>&1 || die "keystone-manage $1 failed (see $LOG/keystone-manage.log)"; }

# The database, keys and bootstrap admin, made once per package version; later starts reuse them.
create_database() {
  local version marker
  version=$(dpkg-query -W -f='${Version}' keystone)
  marker=$STATE/database-ready-$version
  [[ -f $marker && -f $STATE/keystone.sqlite ]] && return 0
  say "creating the Keystone database (once)"
  rm -f "$STATE"/database-ready-* "$STATE/keystone.sqlite" "$STATE/accounts-ready"
  rm -rf "$STATE/fernet-keys" "$STATE/credential-keys"
  install -d -m 700 -o keystone -g keystone "$STATE/fernet-keys" "$STATE/credential-keys"
  chown keystone:keystone "$STATE" "$LOG"
  manage fernet_setup --keystone-user keystone --keystone-group keystone
  manage credential_setup --keystone-user keystone --keystone-group keystone
  manage db_sync
  # Write-ahead logging: in SQLite's default rollback-journal mode a request's read transaction
  # left open blocks every write ("database is locked" after 5 s, seen creating the accounts).
  runuser -u keystone -- sqlite3 "$STATE/keystone.sqlite" 'PRAGMA journal_mode=WAL;' >/dev/null ||
    die "cannot switch the Keystone database to WAL mode"
  manage bootstrap --bootstrap-password "$ADMIN_PASSWORD" --bootstrap-username admin \
    --bootstrap-project-name admin --bootstrap-role-name admin --bootstrap-service-name keystone \
    --bootstrap-region-id "$REGION" --bootstrap-public-url "http://$IP:$KEYSTONE_PORT/v3" \
    --bootstrap-internal-url "http://$IP:$KEYSTONE_PORT/v3" --bootstrap-admin-url "http://$IP:$KEYSTONE_PORT/v3"
  touch "$marker"
}

# Through Keystone's API, as the admin: the proxy's service user, the tests' user and project,
# and the object-store service with its endpoints. Idempotent; done once.
create_accounts() {
  [[ -f $STATE/accounts-ready ]] && return 0
  "$PY" - "http://$IP:$KEYSTONE_PORT/v3" "$ADMIN_PASSWORD" "$SERVICE_PASSWORD" "$TEST_USER" "$TEST_PASSWORD" \
    "$TEST_PROJECT" "$REGION" "http://$IP:$PROXY_PORT/v1/AUTH_%(tenant_id)s" <<'EOF' >"$LOG/accounts.log" 2>&1 ||
import sys
from keystoneauth1.identity import v3
from keystoneauth1 import session
from keystoneclient.v3 import client

url, admin_pw, service_pw, user, user_pw, project, region, swift_url = sys.argv[1:]
auth = v3.Password(auth_url=url, username="admin", password=admin_pw, project_name="admin",
                   user_domain_id="default", project_domain_id="default")
ks = client.Client(session=session.Session(auth=auth))

def one(found, create):
    return found[0] if found else create()

admin_role = one(ks.roles.list(name="admin"), lambda: ks.roles.create("admin"))
member_role = one(ks.roles.list(name="member"), lambda: ks.roles.create("member"))
service_project = one(ks.projects.list(name="service"), lambda: ks.projects.create("service", "default"))
test_project = one(ks.projects.list(name=project), lambda: ks.projects.create(project, "default"))
swift_user = one(ks.users.list(name="swift"), lambda: ks.users.create("swift", domain="default", password=service_pw))
test_user = one(ks.users.list(name=user), lambda: ks.users.create(user, domain="default", password=user_pw))
ks.roles.grant(admin_role, user=swift_user, project=service_project)
ks.roles.grant(member_role, user=test_user, project=test_project)
service = one(ks.services.list(type="object-store"), lambda: ks.services.create("swift", type="object-store"))
have = {e.interface for e in ks.endpoints.list(service=service)}
for interface in ("public", "internal", "admin"):
    if interface not in have:
        ks.endpoints.create(service, swift_url, interface=interface, region=region)
print("accounts ready; project", test_project.id)
EOF
    { tail -20 "$LOG/accounts.log" >&2; die "creating the accounts failed (see $LOG/accounts.log)"; }
  touch "$STATE/accounts-ready"
}

launch() {  # launch NAME COMMAND...: in its own session, output to the log, PID recorded
  local name=$1
  shift
  # 9>&-: the servers must not hold the start/stop lock.
  setsid "$@" </dev/null >>"$LOG/$name.log" 2>&1 9>&- &
  echo $! >"$RUN/$name.pid"
}

wait_answering() {  # wait_answering NAME URL
  local i
  for i in $(seq 1 300); do
    curl -fsS -m 2 -o /dev/null "$2" 2>/dev/null && return 0
    alive "$1" || { tail -20 "$LOG/$1.log" >&2; die "$1 exited while starting (see $LOG/$1.log)"; }
    sleep 0.2
  done
  tail -20 "$LOG/$1.log" >&2
  die "$1 did not answer at $2 within 60 s"
}

swift_backends_up() {
  local port
  for port in "${BACKEND_PORTS[@]}"; do
    curl -fsS -m 2 -o /dev/null "http://$IP:$port/healthcheck" 2>/dev/null || return 1
  done
}

start() {
  local user=""
  if [[ ${1:-} == --for ]]; then
    user=${2:?start --for needs a PID}
    mkdir -p "$USERS"
    touch "$USERS/$user"
  fi
  [[ $(id -u) == 0 ]] || die "run as root: it installs packages and starts servers as other users"
  # The backend servers are the shared Swift's: scripts/swift.sh starts them (or finds them up).
  if [[ -n $user ]]; then
    bash "$HERE/swift.sh" start --for "$user" >/dev/null
  elif ! swift_backends_up; then
    bash "$HERE/swift.sh" start >/dev/null
  fi
  if alive proxy && alive keystone; then
    say "already running (Keystone on $IP:$KEYSTONE_PORT, Swift proxy on $IP:$PROXY_PORT)"
    echo running
    return 0
  fi
  stop >/dev/null
  local port
  for port in "$KEYSTONE_PORT" "$PROXY_PORT"; do
    port_busy "$port" && die "port $IP:$port is already in use by something else"
  done
  install_packages
  id keystone >/dev/null 2>&1 || die "the keystone user is missing (it comes with the keystone package)"
  : >"$LOG/keystone.log"
  : >"$LOG/proxy.log"
  touch "$LOG/keystone-app.log"
  chown keystone:keystone "$STATE" "$LOG" "$LOG/keystone-app.log"
  write_configs
  create_database

  # A start that fails leaves nothing running.
  trap 'stop >/dev/null 2>&1' EXIT
  # --http11-socket: clients keep connections alive (plain --http-socket resets the next request).
  launch keystone env OS_KEYSTONE_CONFIG_DIR="$CONF" uwsgi --plugin python3 --http11-socket "$IP:$KEYSTONE_PORT" \
    --wsgi-file /usr/bin/keystone-wsgi-public --master --processes 1 --threads 4 --enable-threads \
    --lazy-apps --die-on-term --uid keystone --gid keystone --chdir "$STATE" --buffer-size 65535
  launch proxy swift-proxy-server "$CONF/proxy-server.conf" -v
  wait_answering keystone "http://$IP:$KEYSTONE_PORT/v3"
  create_accounts
  wait_answering proxy "http://$IP:$PROXY_PORT/healthcheck"

  # End to end: a token for the tests' user, then its account answers with it.
  local headers token storage code
  headers=$(curl -fsS -m 20 -D - -o "$RUN/token.json" -H 'content-type: application/json' -d "{\"auth\": {
      \"identity\": {\"methods\": [\"password\"], \"password\": {\"user\": {\"name\": \"$TEST_USER\",
        \"domain\": {\"id\": \"default\"}, \"password\": \"$TEST_PASSWORD\"}}},
      \"scope\": {\"project\": {\"name\": \"$TEST_PROJECT\", \"domain\": {\"id\": \"default\"}}}}}" \
    "http://$IP:$KEYSTONE_PORT/v3/auth/tokens") || die "Keystone refused the tests' user"
  token=$(printf '%s' "$headers" | tr -d '\r' | awk -F': ' 'tolower($1) == "x-subject-token" { print $2 }')
  storage=$("$PY" -c 'import json, sys
cat = json.load(open(sys.argv[1]))["token"]["catalog"]
print(next(e["url"] for s in cat if s["type"] == "object-store" for e in s["endpoints"] if e["interface"] == "public"))' "$RUN/token.json")
  rm -f "$RUN/token.json"
  code=$(curl -sS -m 20 -o /dev/null -w '%{http_code}' -I -H "X-Auth-Token: $token" "$storage")
  [[ $code == 2?? ]] || die "the account $storage answered HEAD with $code (see $LOG/proxy.log)"
  trap - EXIT
  [[ -z $user ]] || touch "$RUN/started-for-tests"
  say "ready: Keystone on http://$IP:$KEYSTONE_PORT/v3, Swift proxy on http://$IP:$PROXY_PORT (logs in $LOG)"
  echo started
}

release() {
  local user=${1:?release needs the PID given to start --for} file busy=0
  rm -f "$USERS/$user"
  for file in "$USERS"/*; do
    [[ -e $file ]] || continue
    if [[ $(stat_field "${file##*/}" 1 2>/dev/null) =~ ^[^Z]$ ]]; then
      busy=1 # another run still uses it
    else
      rm -f "$file"
    fi
  done
  ((busy)) || [[ ! -e $RUN/started-for-tests ]] || stop
  bash "$HERE/swift.sh" release "$user"
}

# Fields of /proc/PID/stat after "(comm)": 1 = state, 4 = session id.
stat_field() {
  local stat fields
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  read -ra fields <<<"${stat##*) }"
  echo "${fields[$2 - 1]}"
}

# uWSGI and the proxy fork workers into the session the launcher's setsid made; its id is the
# PID we recorded, so the workers can be found without matching on names.
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
    exec 9>"$STATE/lock"
    flock 9
    mkdir -p "$RUN" "$LOG"
    "$@"
    ;;
  install)
    mkdir -p "$LOG"
    install_packages
    ;;
  env) print_env ;;
  *) die "usage: $0 start [--for PID] | release PID | stop | env | install" ;;
esac
