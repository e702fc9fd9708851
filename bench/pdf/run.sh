#!/usr/bin/env bash
# PDF benchmark: in-sandbox render time (export-host serve, fresh sandbox per
# task) for a one-page letter and a 100-row invoice, next to the same plugin
# crate compiled natively and LibreOffice headless DOCX->PDF on equivalent
# documents: LibreOffice (libreoffice-writer-nogui from Debian) is installed
# here when `soffice` is missing (set PDF_BENCH_NO_LIBREOFFICE=1 to skip it).
# The tests never install it.
#   bench/pdf/run.sh [N]      # N renders per document (default 20)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
n="${1:-20}"

echo "==> building the host, the pdf plugin and the native twin"
# BENCH_PREBUILT=1 (scripts/bench.sh): the host and plugins are built already.
if [ "${BENCH_PREBUILT:-}" != 1 ]; then
  cargo build --release -q
  scripts/build-plugins.sh pdf >/dev/null
fi
(cd bench/pdf && CARGO_TARGET_DIR="$root/target/native-pdf" cargo build --release -q)

if [ -z "${PDF_BENCH_NO_LIBREOFFICE:-}" ] && ! command -v soffice >/dev/null; then
  echo "==> installing LibreOffice (libreoffice-writer-nogui) for the comparison"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
    libreoffice-writer-nogui >/dev/null
fi

plugins="$root/target/bench-pdf-plugins"
mkdir -p "$plugins"
cp plugins/dist/pdf.wasm "$plugins/pdf.wasm"
cache="$root/target/test-plugin-cache"
# Precompile once (also what `serve` does at start when the cache is cold).
target/release/export-host render --config <(printf 'plugins:\n  cache_dir: "%s"\n' "$cache") \
  --plugins "$plugins" --template tests/assets/pdf/letter.typ --data bench/pdf/letter.json \
  --format pdf --out /dev/null 2>/dev/null || true

python3 bench/pdf/bench.py target/release/export-host "$plugins" "$cache" \
  target/native-pdf/release/export-host-pdf-bench "$n"
