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

echo "==> scaling: 1 vs 2 render threads (embedded), 1 vs 2 worker processes (RocketMQ)"
if [ -d "$out/e2e-plugins" ]; then
  E2E_PLUGIN_CACHE="$out/e2e-cache" python3 bench/scaling.py "$exe" "$out/e2e-plugins" \
    tests/assets/docx/letter.docx "$out/letter.json" 2000 > "$out/scaling.json" \
    || echo '{"error": "bench/scaling.py failed"}' > "$out/scaling.json"
else
  echo '{"error": "needs the plugins prepared for the wrk step"}' > "$out/scaling.json"
fi

echo "==> profile (perf, cpu-clock) of the no-op and DOCX-letter drains, embedded"
rm -f "$out/profile.txt"
if perf record -q -e cpu-clock -o "$out/perf-probe.data" true >/dev/null 2>&1; then
  for kind in noop docx; do
    if [ "$kind" = noop ]; then
      BENCH_PERF="$out/$kind.perf" python3 bench/throughput.py "$exe" target/test-guests/noop.wasm 5000 full >/dev/null
    else
      BENCH_PERF="$out/$kind.perf" BENCH_FORMAT=docx BENCH_TEMPLATE=tests/assets/docx/letter.docx \
        BENCH_DATA="$out/letter.json" python3 bench/throughput.py "$exe" plugins/dist/docx.wasm 3000 full >/dev/null
    fi
    { echo "## $kind"; perf report -i "$out/$kind.perf" --no-children -g none --sort dso,sym -q 2>/dev/null \
        | grep -v '^$' | head -25; } >> "$out/profile.txt" || true
  done
else
  echo "perf cannot record here" > "$out/profile.txt"
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
  echo
  echo "Profile of the server while it drains (perf record -e cpu-clock, self time, top entries):"
  echo
  echo '```'
  cat "$out/profile.txt"
  echo '```'
  # What limits the goals that are missed (kept by hand, next to the bench).
  if [ -f bench/LIMITS.md ]; then echo; cat bench/LIMITS.md; fi
} > bench/RESULTS.md
echo "==> wrote bench/RESULTS.md and bench/results.json"
