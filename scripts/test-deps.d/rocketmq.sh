#!/usr/bin/env bash
# Test-only dependency of the RocketMQ tests (tests/queue_conformance.rs,
# tests/rocketmq.rs): the rocketmq-rust 1.0.0 name server and broker, built
# once into $HOME/.cache/export-host/rocketmq (about 20 minutes on 2 cores).
# The test harness (tests/common/broker.rs) looks there, or in
# $EXPORT_HOST_ROCKETMQ_BIN. Idempotent: does nothing when both exist.
set -euo pipefail

root="${HOME}/.cache/export-host/rocketmq"
bin="${root}/bin"
if [ -x "${bin}/rocketmq-namesrv-rust" ] && [ -x "${bin}/rocketmq-broker-rust" ]; then
  echo "==> rocketmq test deps: present (${bin})"
  exit 0
fi

echo "==> rocketmq test deps: building rocketmq-namesrv 1.0.0 and rocketmq-broker 1.0.0 into ${root}"
echo "    (one time, about 20 minutes on 2 cores; progress below)"
mkdir -p "${root}"
started=$(date +%s)
cargo install --locked --root "${root}" rocketmq-namesrv@1.0.0 rocketmq-broker@1.0.0
echo "==> rocketmq test deps: installed in $(( $(date +%s) - started )) s"
ls -l "${bin}"
