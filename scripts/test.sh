#!/usr/bin/env bash
# Runs every check and test from a fresh machine of this kind (Debian 12, Node 20, Go):
# installs what is missing, checks the protos and generated code, builds, then runs vitest.
# Servers the tests need (FerretDB, the service itself) are started and stopped by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# Debian packages the tests use; installed only when missing.
# fdisk (sfdisk) and xorriso build the partitioned and ISO images of the image-safety corpus.
debian_packages=(openssl qemu-utils fdisk xorriso xz-utils zstd unzip zip)
missing=()
for pkg in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  step "installing Debian packages: ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then echo "need root to install ${missing[*]}" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

if [[ ! -d node_modules || package-lock.json -nt node_modules/.package-lock.json ]]; then
  step "npm ci"
  npm ci --no-audit --no-fund
fi

step "buf lint"
npx buf lint

step "buf generate reproduces src/gen byte for byte"
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
npx buf generate --output "$gen"
diff -r src/gen "$gen/src/gen"

step "typecheck"
npx tsc -p tsconfig.json --noEmit

step "build"
npm run build --silent

# Built once here so that no test's timeout has to cover a first-time Go build.
step "FerretDB (MongoDB wire protocol server for the tests)"
bash scripts/ferretdb.sh

step "vitest"
# One plain closing line that any CI can read.
status=0
npx vitest run --reporter=default --reporter=json --outputFile.json="$gen/vitest.json" "$@" || status=$?
node -e 'const r = require(process.argv[1]);
  console.log(`vitest: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests + r.numTodoTests} skipped`);' "$gen/vitest.json"
exit "$status"
