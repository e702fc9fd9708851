#!/usr/bin/env bash
# promtool (Debian's prometheus package) validates config/alerts.yml in the tests.
set -euo pipefail
command -v promtool >/dev/null 2>&1 && exit 0
echo "==> installing promtool (Debian package prometheus)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || true
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
