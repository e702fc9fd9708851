#!/usr/bin/env python3
"""Time the docx plugin inside a running export-host (fresh sandbox per task).

    serve_bench.py EXPORT_HOST PLUGIN_DIR WORKDIR TEMPLATE DATA RUNS

Starts `export-host serve`, uploads TEMPLATE, submits RUNS tasks one after the
other, and reads the per-task `elapsed_ms` the worker logs (template read +
instantiate + render). Prints one JSON line: median / min render ms, median
end-to-end ms (submit to succeeded, HTTP polling included) and the server's
peak RSS.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request


def call(method, url, body=None, ctype="application/json"):
    req = urllib.request.Request(url, data=body, method=method, headers={"content-type": ctype})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


def main(exe, plugins, work, template, data_path, runs):
    os.makedirs(work, exist_ok=True)
    cfg = os.path.join(work, "config.yaml")
    with open(cfg, "w") as f:
        f.write(
            'server:\n  listen: "127.0.0.1:0"\nstorage:\n  data_dir: "%s"\nplugins:\n  dir: "%s"\n'
            "worker:\n  concurrency: 1\n" % (os.path.join(work, "data"), plugins)
        )
    log_path = os.path.join(work, "server.log")
    log = open(log_path, "w")
    env = dict(os.environ, RUST_LOG="warn,export_host=info", NO_COLOR="1")
    p = subprocess.Popen([exe, "serve", "--config", cfg], stdout=subprocess.PIPE, stderr=log, env=env, text=True)
    try:
        base = None
        deadline = time.time() + 120
        while time.time() < deadline:
            line = p.stdout.readline()
            if line.startswith("export-host listening on "):
                base = line.split("listening on ", 1)[1].strip()
                break
        if not base:
            raise SystemExit("server did not start")
        name = os.path.basename(template)
        with open(template, "rb") as f:
            call("PUT", "%s/api/v1/templates/bench/%s" % (base, name), f.read(), "application/octet-stream")
        with open(data_path) as f:
            data = json.load(f)
        body = json.dumps({"template_id": "bench", "output_format": "docx", "data": data}).encode()
        e2e = []
        time.sleep(1.0)  # let background start-up work (font index) finish
        # Without a cached snapshot the plugin serves unprepared while the host
        # prepares it in the background (seconds of CPU on these 2 cores):
        # measure the prepared state, as a server does after its first minute.
        with open(log_path) as lf:
            waits = "waits_for_prepare=true" in lf.read()
        deadline = time.time() + 600
        while waits and time.time() < deadline:
            with open(log_path) as lf:
                text = lf.read()
            if "tasks now start from its snapshot" in text or "plugin not prepared" in text:
                break
            time.sleep(0.5)
        for i in range(runs + 1):
            t = time.perf_counter()
            task = call("POST", base + "/api/v1/export", body)["data"]["task_id"]
            while True:
                st = call("GET", "%s/api/v1/tasks/%s" % (base, task))["data"]
                if st["status"] in ("succeeded", "failed", "dead"):
                    break
                time.sleep(0.001)
            if st["status"] != "succeeded":
                raise SystemExit("task failed: %s" % st)
            if i:  # the first one warms up the process
                e2e.append((time.perf_counter() - t) * 1000)
        with open("/proc/%d/status" % p.pid) as f:
            rss = next((int(l.split()[1]) for l in f if l.startswith("VmHWM")), 0)
    finally:
        p.terminate()
        p.wait()
        log.close()
    with open(log_path) as f:
        text = re.sub(r"\x1b\[[0-9;]*m", "", f.read())
    ms = [float(m) for m in re.findall(r"task succeeded elapsed_ms=([0-9.]+)", text)][1:]
    print(json.dumps({
        "median_ms": statistics.median(ms), "min_ms": min(ms),
        "e2e_median_ms": statistics.median(e2e), "rss_mb": rss / 1024,
    }))


if __name__ == "__main__":
    a = sys.argv
    main(a[1], a[2], a[3], a[4], a[5], int(a[6]))
