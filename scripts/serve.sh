#!/usr/bin/env bash
# Build the plugins and the host, then run the service on the embedded queue
# (no broker) at http://127.0.0.1:8000. Extra arguments go to `export-host serve`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/build-plugins.sh
echo "==> building export-host (release)"
cargo build --release --bin export-host
echo "==> serving on the embedded queue, no authentication (single default tenant)"
exec target/release/export-host serve --config config/dev.yaml "$@"
