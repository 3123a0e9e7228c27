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
# The scale-out test (three servers on one FerretDB, one killed) runs on its own afterwards:
# beside the other files on 2 saturated cores its imports stall (see the test's header).
alone=test/e2e/scale-out.test.ts
status=0
npx vitest run --exclude "$alone" --reporter=default --reporter=json --outputFile.json="$gen/main.json" "$@" || status=$?
step "vitest: $alone, alone"
npx vitest run "$alone" --reporter=default --reporter=json --outputFile.json="$gen/alone.json" || status=$?
# One plain closing line that any CI can read.
node -e 'const rs = process.argv.slice(1).map((f) => require(f));
  const sum = (k) => rs.reduce((n, r) => n + r[k], 0);
  console.log(`vitest: ${sum("numPassedTests")} passed, ${sum("numFailedTests")} failed, ${sum("numPendingTests") + sum("numTodoTests")} skipped`);' "$gen/main.json" "$gen/alone.json"
exit "$status"
