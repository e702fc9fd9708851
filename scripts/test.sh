#!/usr/bin/env bash
# The whole test suite, from a fresh machine: wasm target, plugin and guest
# builds, then unit and integration tests (release profile: the sandbox
# compiles plugins with Cranelift, which is slow unoptimised).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/build-plugins.sh
# Extra tools some tests need (independent readers of our output, ...):
# one script per concern, each idempotent.
for deps in scripts/test-deps.d/*.sh; do
  [ -e "$deps" ] && bash "$deps"
done
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> tests"
cargo test --release --workspace -- --test-threads 2
