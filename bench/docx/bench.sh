#!/usr/bin/env bash
# Side by side: export-host's docx plugin vs Python docxtpl on the same
# templates and data (a one-page letter, a 1000-row invoice).
#   bench/docx/bench.sh [RUNS]      (default 20)
# Ours: tasks in a running `export-host serve` (fresh sandbox per task), and
# the wall time of one offline `export-host render`. Memory: peak RSS of the
# server (the whole host with wasmtime) vs the Python heap peak of docxtpl.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
runs="${1:-20}"
bash scripts/test-deps.d/docx.sh >/dev/null
[ -x target/release/export-host ] || cargo build --release -q
[ -f plugins/dist/docx.wasm ] || scripts/build-plugins.sh >/dev/null
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/plugins"
cp plugins/dist/docx.wasm "$work/plugins/"
python3 bench/docx/make_data.py "$work"

ours() { # template data -> "median_render_ms median_wall_ms max_rss_mb"
  local t="$1" d="$2" renders=() walls=() rss=0
  (cd "$work" && RUST_LOG=warn "$root/target/release/export-host" render --plugins plugins \
      --template "$t" --data "$d" --format docx --out warm.docx >/dev/null 2>&1)
  for _ in $(seq "$runs"); do
    local s e out
    s=$(date +%s%N)
    out=$(cd "$work" && RUST_LOG=warn /usr/bin/time -f 'RSS %M' "$root/target/release/export-host" render \
      --plugins plugins --template "$t" --data "$d" --format docx --out o.docx 2>&1)
    e=$(date +%s%N)
    renders+=("$(sed -n 's/.* in \([0-9.]*\) ms.*/\1/p' <<<"$out")")
    walls+=("$(( (e - s) / 1000 ))")
    local r; r=$(sed -n 's/^RSS \([0-9]*\)/\1/p' <<<"$out"); [ "$r" -gt "$rss" ] && rss=$r
  done
  python3 - "$rss" "${renders[@]}" -- "${walls[@]}" <<'PY'
import statistics, sys
a = sys.argv[2:]; i = a.index("--")
r = [float(x) for x in a[:i]]; w = [int(x) / 1000 for x in a[i + 1:]]
print("%.2f %.2f %.2f %.1f" % (statistics.median(r), min(r), statistics.median(w), int(sys.argv[1]) / 1024))
PY
}

printf '%-20s | %11s %9s %11s %9s %9s | %11s %9s %8s | %7s\n' case "ours median" "ours min" "HTTP e2e" "CLI wall" "srv RSS" "docxtpl med" "min" "py heap" speedup
for case in letter invoice; do
  t="$root/tests/assets/docx/$case.docx"; d="$work/$case.json"
  read -r _ _ wall _ <<<"$(ours "$t" "$d")"
  sv=$(python3 bench/docx/serve_bench.py "$root/target/release/export-host" "$work/plugins" "$work/serve-$case" "$t" "$d" "$runs")
  read -r med mn e2e rss <<<"$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print("%.2f %.2f %.2f %.0f" % (d["median_ms"], d["min_ms"], d["e2e_median_ms"], d["rss_mb"]))' "$sv")"
  py=$(python3 bench/docx/docxtpl_bench.py "$t" "$d" "$runs")
  read -r pmed pmin pheap <<<"$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print("%.2f %.2f %.1f" % (d["median_ms"], d["min_ms"], d["peak_heap_mb"]))' "$py")"
  speed=$(python3 -c "print('%.0fx' % ($pmed / $med))")
  label=$case; [ "$case" = invoice ] && label="invoice (1000 rows)"
  printf '%-20s | %8s ms %6s ms %8s ms %6s ms %6s MB | %8s ms %6s ms %5s MB | %7s\n' "$label" "$med" "$mn" "$e2e" "$wall" "$rss" "$pmed" "$pmin" "$pheap" "$speed"
done
echo "ours median/min: render of one task in a running server (fresh sandbox: template read, instantiate, render),"
echo "  from the worker's elapsed_ms; HTTP e2e: submit to succeeded incl. polling; CLI wall: one"
echo "  'export-host render' process (start, load precompiled component, render, write)."
echo "docxtpl: DocxTemplate(...).render() + save() in a warm Python process; py heap: tracemalloc peak."
