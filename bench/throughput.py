#!/usr/bin/env python3
"""End-to-end no-op throughput on the embedded (durable) queue.

Starts `export-host serve` with the noop test guest, submits N tasks in
batches of 1000 over HTTP, and measures: submit rate, time to drain the
queue (every task succeeded), tasks/s end to end, and the server's RSS.
Usage: throughput.py EXPORT_HOST NOOP_WASM N [sync] [worker concurrency, 0 = CPUs] [in_flight]
With $BENCH_PERF=FILE the server is profiled while it drains (perf record,
cpu-clock, call graphs) into FILE. Another format: $BENCH_FORMAT (e.g. docx)
with the plugin as NOOP_WASM, $BENCH_TEMPLATE (a template file) and
$BENCH_DATA (a JSON file, the data of every task).
Prints one JSON object."""
import json, os, subprocess, sys, tempfile, time, urllib.request

exe, noop, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
sync = sys.argv[4] if len(sys.argv) > 4 else "full"
concurrency = int(sys.argv[5]) if len(sys.argv) > 5 else 0
in_flight = int(sys.argv[6]) if len(sys.argv) > 6 else 64
work = tempfile.mkdtemp()
os.makedirs(f"{work}/plugins")
fmt = os.environ.get("BENCH_FORMAT", "noop")
template = os.environ.get("BENCH_TEMPLATE")
data = None
if os.environ.get("BENCH_DATA"):
    with open(os.environ["BENCH_DATA"]) as f:
        data = json.load(f)
subprocess.run(["cp", noop, f"{work}/plugins/{fmt}.wasm"], check=True)
with open(f"{work}/config.yaml", "w") as f:
    f.write(f'server:\n  listen: "127.0.0.1:0"\nstorage:\n  data_dir: "{work}/data"\n'
            f'plugins:\n  dir: "{work}/plugins"\n  watch: false\n  font_dirs: []\n'
            f'queue:\n  embedded:\n    sync: {sync}\nworker:\n  concurrency: {concurrency}\n'
            f'  in_flight: {in_flight}\n')
srv = subprocess.Popen([exe, "serve", "--config", f"{work}/config.yaml"], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"}, text=True)
base = srv.stdout.readline().strip().rsplit(" ", 1)[-1]

def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())

def rss_mb():
    with open(f"/proc/{srv.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024

try:
    name, body = ("t.noop", b"x") if not template else (os.path.basename(template), open(template, "rb").read())
    req = urllib.request.Request(base + f"/api/v1/templates/t/{name}", data=body, method="PUT",
                                 headers={"content-type": "application/octet-stream"})
    urllib.request.urlopen(req).read()
    idle_rss = rss_mb()
    perf = None
    if os.environ.get("BENCH_PERF"):
        perf = subprocess.Popen(["perf", "record", "-q", "-F", "1999", "-e", "cpu-clock", "-g",
                                 "-p", str(srv.pid), "-o", os.environ["BENCH_PERF"]],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    start = time.perf_counter()
    batch_ms = []
    for i in range(0, n, 1000):
        t = time.perf_counter()
        call("POST", "/api/v1/export/batch", {"template_id": "t", "output_format": fmt,
                                               "data_list": [data or {"i": j} for j in range(i, min(n, i + 1000))]})
        batch_ms.append((time.perf_counter() - t) * 1000)
    submitted = time.perf_counter()
    peak = rss_mb()
    while True:
        d = call("GET", "/api/v1/queue/status")["data"]["metrics"]
        peak = max(peak, rss_mb())
        if d["total_lag"] == 0:
            break
        time.sleep(0.02)
    done = time.perf_counter()
    if perf:
        perf.send_signal(2)
        perf.wait()
    m = call("GET", "/api/v1/queue/metrics")["data"]
    batch_ms.sort()
    print(json.dumps({
        "tasks": n, "format": fmt, "sync": sync, "concurrency": concurrency, "in_flight": in_flight,
        "submit_tasks_per_s": round(n / (submitted - start)),
        "submit_batch1000_p50_ms": round(batch_ms[len(batch_ms) // 2], 1),
        "drain_s": round(done - start, 2),
        "e2e_tasks_per_s": round(n / (done - start)),
        "latency_p50_like_avg_ms": m["latency"]["average_ms"], "latency_p99_ms": m["latency"]["p99_ms"],
        "consumed": m["counts"]["consumed"], "errors": m["counts"]["consume_errors"],
        "rss_idle_mb": round(idle_rss, 1), "rss_peak_mb": round(peak, 1),
    }))
finally:
    srv.terminate()
    srv.wait()
