#!/usr/bin/env bash
# Benchmarks (not tests): builds release binaries, measures side by side in
# one run, prints a markdown table and writes bench/RESULTS.md and
# bench/results.json.   scripts/bench.sh [N_TASKS] (default 10000)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
n="${1:-10000}"
echo "==> building (release) plugins, guests, host"
scripts/build-plugins.sh >/dev/null
cargo build --release -q --bin export-host
echo "==> sandbox overhead (noop guest) vs native call"
sandbox=$(cargo bench -q --bench sandbox 2>/dev/null | tail -1)
echo "==> end to end: $n no-op tasks through HTTP + embedded queue (sync=full, then normal)"
full=$(python3 bench/throughput.py target/release/export-host target/test-guests/noop.wasm "$n" full)
normal=$(python3 bench/throughput.py target/release/export-host target/test-guests/noop.wasm "$n" normal)
docx=""
if [ -x bench/docx/bench.sh ]; then
  echo "==> docx vs docxtpl"
  docx=$(bash bench/docx/bench.sh 15 2>&1 | tail -n 20)
fi
python3 - "$sandbox" "$full" "$normal" "$n" <<'PY' > bench/results.json
import json, sys
s, f, nm = (json.loads(a) for a in sys.argv[1:4])
print(json.dumps({"sandbox": s, "e2e_noop_sync_full": f, "e2e_noop_sync_normal": nm}, indent=2))
PY
table=$(python3 - <<'PY'
import json
r = json.load(open("bench/results.json"))
s, f, n = r["sandbox"], r["e2e_noop_sync_full"], r["e2e_noop_sync_normal"]
rows = [
  ("sandbox overhead p50, pooling (instantiate+call+drop)", f'{s["sandbox_pooling_p50_us"]:.1f} µs', "≤ 20 µs", f'{s["sandbox_pooling_p50_us"]/max(s["native_p50_us"],1e-3):.0f}× native ({s["native_p50_us"]:.2f} µs)'),
  ("sandbox overhead p99, pooling", f'{s["sandbox_pooling_p99_us"]:.1f} µs', "", ""),
  ("sandbox overhead p50, on-demand allocation", f'{s["sandbox_on_demand_p50_us"]:.1f} µs', "", f'pooling is {s["sandbox_on_demand_p50_us"]/s["sandbox_pooling_p50_us"]:.1f}× faster'),
  ("no-op tasks/s end to end, durable (sync=full)", f'{f["e2e_tasks_per_s"]}', "≥ 5,000", f'drain {f["drain_s"]} s for {f["tasks"]}'),
  ("no-op tasks/s end to end, sync=normal", f'{n["e2e_tasks_per_s"]}', "", f'full/normal = {f["e2e_tasks_per_s"]/n["e2e_tasks_per_s"]:.2f}'),
  ("submit: batch of 1000, p50 (sync=full)", f'{f["submit_batch1000_p50_ms"]} ms', "", f'{f["submit_tasks_per_s"]} tasks/s accepted'),
  ("host RSS idle / peak under load", f'{f["rss_idle_mb"]} / {f["rss_peak_mb"]} MB', "", ""),
]
print("| measure | ours | target | side by side |\n|---|---|---|---|")
for r_ in rows: print("| " + " | ".join(r_) + " |")
PY
)
echo "$table"
[ -n "$docx" ] && echo "$docx"
{
  echo "# Benchmark results"
  echo
  echo "Command: \`scripts/bench.sh $n\` on $(nproc) cores, $(date -u +%Y-%m-%d), $(rustc --version), wasmtime 48.0.8."
  echo "These machines are noisy (2 shared cores): compare ratios within one run."
  echo
  echo "$table"
  if [ -n "$docx" ]; then echo; echo '```'; echo "$docx"; echo '```'; fi
  echo
  echo "Raw figures: bench/results.json."
} > bench/RESULTS.md
echo "==> wrote bench/RESULTS.md and bench/results.json"
