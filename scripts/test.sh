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
# Every RocketMQ test runs against Apache RocketMQ 4.9.4 (the Java broker,
# tests/common/broker.rs); the queue conformance suite and tests/rocketmq.rs
# run again against Apache RocketMQ 5.x and the rocketmq-rust broker.
echo "==> tests (RocketMQ broker: apache-4.9.4)"
EXPORT_HOST_BROKER=apache-4.9.4 cargo test --release --workspace -- --test-threads 2
for broker in apache-5 rust; do
  skip=()
  # Known failure (docs/ARCHITECTURE.md "Brokers tested", issue 18): after a
  # 5.x broker restart the worker resumes consuming only after a minute or
  # more, so this test's 120 s wait fails about one run in three.
  if [ "$broker" = apache-5 ]; then
    skip=(--skip broker_killed_and_restarted_loses_no_accepted_task)
    echo "==> NOTE: skipping broker_killed_and_restarted_loses_no_accepted_task on apache-5 (known failure)"
  fi
  echo "==> tests queue_conformance + rocketmq (RocketMQ broker: ${broker})"
  EXPORT_HOST_BROKER="$broker" cargo test --release -p export-host \
    --test queue_conformance --test rocketmq -- --test-threads 2 "${skip[@]}"
done
