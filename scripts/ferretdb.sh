#!/usr/bin/env bash
# Prints the path of a FerretDB binary on stdout, building it into the cache if needed.
# Used by test/helpers/mongo-server.ts when neither MONGODB_URI nor mongod is available.
set -euo pipefail

FERRETDB_MODULE=github.com/FerretDB/FerretDB
FERRETDB_VERSION=v1.24.2

CACHE_DIR="${ITX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/imagetransfer}"
BIN_DIR="$CACHE_DIR/bin"
BIN="$BIN_DIR/ferretdb"

log() { echo "ferretdb.sh: $*" >&2; }

# A binary that panics or reports another version must not be reused.
# (Output is captured rather than piped to `grep -q`, which could SIGPIPE it under pipefail.)
is_usable() {
  local out
  [[ -x "$BIN" ]] || return 1
  out="$("$BIN" --version 2>/dev/null)" || return 1
  [[ $'\n'"$out"$'\n' == *$'\n'"version: $FERRETDB_VERSION"$'\n'* ]]
}

if is_usable; then
  echo "$BIN"
  exit 0
fi

# The official Go tarball lives here but is not always on PATH.
if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
  PATH="/usr/local/go/bin:$PATH"
fi
if ! command -v go >/dev/null 2>&1; then
  log "error: Go is required to build FerretDB $FERRETDB_VERSION (install Go >= 1.24 or set MONGODB_URI)"
  exit 1
fi

mkdir -p "$BIN_DIR"

# Serialise builds: parallel test workers may all call this script on a fresh machine.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$BIN_DIR/.ferretdb.lock"
  flock 9
  if is_usable; then
    echo "$BIN"
    exit 0
  fi
fi

# `go install ...@v1.24.2` builds a binary that panics at startup: the module zip lacks the
# generated build/version/version.txt. So build from a copy of the module with that file added.
log "building FerretDB $FERRETDB_VERSION into $BIN_DIR (first run only, takes a minute or two)"
src_root="$(go mod download -json "$FERRETDB_MODULE@$FERRETDB_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
if [[ -z "$src_root" || ! -d "$src_root" ]]; then
  log "error: could not download $FERRETDB_MODULE@$FERRETDB_VERSION"
  exit 1
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/ferretdb-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cp -R "$src_root/." "$work/"
chmod -R u+w "$work" # module cache files are read-only
echo "$FERRETDB_VERSION" >"$work/build/version/version.txt"

# No .git in the copy, so VCS stamping must be off; build to a temp name so a failed build
# never leaves a half-written binary behind.
(cd "$work" && go build -buildvcs=false -trimpath -o "$BIN.tmp" ./cmd/ferretdb) >&2
mv -f "$BIN.tmp" "$BIN"

if ! is_usable; then
  log "error: built $BIN but \`ferretdb --version\` does not report $FERRETDB_VERSION"
  exit 1
fi
log "built $BIN"
echo "$BIN"
