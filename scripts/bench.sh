#!/usr/bin/env bash
# Benchmarks (not tests): builds release binaries, measures side by side in
# one run, prints one markdown table and writes bench/RESULTS.md and
# bench/results.json.
#   scripts/bench.sh [N_TASKS] [WRK_SECONDS]   (defaults 10000, 10)
# Needs wrk (apt-get install -y wrk) for the end-to-end figures; RocketMQ
# figures need the servers of scripts/test-deps.d/rocketmq.sh. Parts that
# cannot run say so in the table instead of failing the whole bench.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
n="${1:-10000}"
secs="${2:-10}"
out="$root/target/bench"
mkdir -p "$out"
echo "==> building (release) plugins, guests, host"
scripts/build-plugins.sh >/dev/null
cargo build --release -q --bin export-host
exe="$root/target/release/export-host"

echo "==> sandbox overhead (noop guest) vs native call"
cargo bench -q --bench sandbox 2>/dev/null | tail -1 > "$out/sandbox.json"

echo "==> end to end: $n no-op tasks in batches through HTTP + embedded queue (sync=full, then normal)"
python3 bench/throughput.py "$exe" target/test-guests/noop.wasm "$n" full > "$out/full.json"
python3 bench/throughput.py "$exe" target/test-guests/noop.wasm "$n" normal > "$out/normal.json"

echo "==> end to end with wrk: embedded vs RocketMQ (no-op, DOCX letter, submit latency with a $n backlog, drain)"
if command -v wrk >/dev/null; then
  rm -rf "$out/e2e-plugins" && mkdir -p "$out/e2e-plugins"
  cp target/test-guests/noop.wasm plugins/dist/docx.wasm "$out/e2e-plugins/"
  python3 bench/docx/make_data.py "$out"
  E2E_PLUGIN_CACHE="$out/e2e-cache" python3 bench/e2e.py "$exe" "$out/e2e-plugins" \
    tests/assets/docx/letter.docx "$out/letter.json" "$secs" "$n" > "$out/e2e.json" \
    || echo '{"error": "bench/e2e.py failed"}' > "$out/e2e.json"
else
  echo '{"error": "wrk is not installed (apt-get install -y wrk)"}' > "$out/e2e.json"
fi

echo "==> DOCX: in-server render vs docxtpl"
bash bench/docx/bench.sh 15 > "$out/docx.txt" 2>&1 || echo "docx bench failed" >> "$out/docx.txt"

echo "==> PDF: in-sandbox vs the same crate native (and LibreOffice when installed)"
BENCH_PREBUILT=1 bash bench/pdf/run.sh 15 > "$out/pdf.txt" 2>&1 || echo "pdf bench failed" >> "$out/pdf.txt"

python3 bench/report.py "$out" "$n" > bench/results.json
table=$(python3 bench/report.py --table bench/results.json)
echo
echo "$table"
wasmtime_version=$(sed -n 's/^wasmtime = .*"=*\([0-9.]*\)".*/\1/p' host/Cargo.toml | head -1)
wrk_version=$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2 || true)
{
  echo "# Benchmark results"
  echo
  echo "Command: \`scripts/bench.sh $n $secs\` on $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)),"
  echo "$(date -u +%Y-%m-%d), $(rustc --version), wasmtime ${wasmtime_version:-48}, ${wrk_version:-wrk missing},"
  echo "RocketMQ: rocketmq-rust 1.0.0 name server + broker (scripts/test-deps.d/rocketmq.sh), SYNC_FLUSH, one broker."
  echo "These machines are noisy (2 shared cores, other builds running): compare ratios within one run."
  echo
  echo "$table"
  echo
  echo "Raw figures: bench/results.json; the DOCX and PDF benches' own tables:"
  echo
  echo '```'
  tail -n 12 "$out/docx.txt"
  echo
  grep -A8 '^PDF render times' "$out/pdf.txt" || tail -n 8 "$out/pdf.txt"
  echo '```'
  # What limits the goals that are missed (kept by hand, next to the bench).
  if [ -f bench/LIMITS.md ]; then echo; cat bench/LIMITS.md; fi
} > bench/RESULTS.md
echo "==> wrote bench/RESULTS.md and bench/results.json"
