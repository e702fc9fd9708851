#!/usr/bin/env python3
"""Scaling, side by side in one run: tasks/s with 1 and 2 render threads
(`worker.concurrency`) on the embedded queue, and with 1 and 2 worker
processes (`serve --role worker`, one render thread each) behind one API
process (`--role api`) on RocketMQ.

    scaling.py EXPORT_HOST PLUGIN_DIR LETTER_DOCX LETTER_JSON [N]

For each setup N tasks (default 2000) of each kind (no-op, DOCX letter) are
submitted over HTTP in batches of 500 while the workers are already
running; tasks/s = N / (first submit .. last task finished, from the
workers' `export_tasks_finished_total`). RocketMQ servers as in e2e.py.
Prints one JSON object.
"""
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e import Host, RocketMQ, call  # noqa: E402


def ready(h, timeout=60):
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(h.base + "/ready", timeout=10) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.time() > deadline:
            raise RuntimeError("worker not ready")
        time.sleep(0.1)


def templates(api, letter_docx):
    call(api.base, "PUT", "/api/v1/templates/noop/t.noop", raw=b"x", ctype="application/octet-stream")
    with open(letter_docx, "rb") as f:
        call(api.base, "PUT", "/api/v1/templates/letter/letter.docx", raw=f.read(),
             ctype="application/octet-stream")


def run(api, workers, letter, n):
    """tasks/s per kind; `workers` are the processes that render."""
    def finished():
        return sum(w.finished() for w in workers)

    out = {}
    for kind, fmt, data in [("noop", "noop", lambda i: {"i": i}), ("docx", "docx", lambda i: letter)]:
        # Warm up: one task of the kind through every path.
        n0 = finished()
        call(api.base, "POST", "/api/v1/export", {"template_id": kind if kind == "noop" else "letter",
                                                   "output_format": fmt, "data": data(0)})
        while finished() < n0 + 1:
            time.sleep(0.02)
        n0 = finished()
        t0 = time.perf_counter()
        for i in range(0, n, 500):
            k = min(500, n - i)
            call(api.base, "POST", "/api/v1/export/batch",
                 {"template_id": kind if kind == "noop" else "letter", "output_format": fmt,
                  "data_list": [data(j) for j in range(i, i + k)]})
        deadline = time.time() + 600
        while finished() < n0 + n:
            if time.time() > deadline:
                raise RuntimeError(f"{kind}: only {finished() - n0} of {n} finished")
            time.sleep(0.02)
        out[f"{kind}_tasks_per_s"] = round(n / (time.perf_counter() - t0))
    return out


def embedded(exe, plugins, letter_docx, letter, n):
    out = {}
    for threads in (1, 2):
        work = tempfile.mkdtemp(prefix=f"scale-embedded-{threads}-")
        h = Host(exe, plugins, work, "embedded", concurrency=threads)
        try:
            templates(h, letter_docx)
            out[f"threads_{threads}"] = run(h, [h], letter, n)
        finally:
            h.stop()
            shutil.rmtree(work, ignore_errors=True)
    return out


def rocketmq(exe, plugins, letter_docx, letter, n, name_server):
    out = {}
    for procs in (1, 2):
        work = tempfile.mkdtemp(prefix=f"scale-rocketmq-{procs}-")
        shared = os.path.join(work, "shared")
        extra = f'  topic: "scale_{procs}"\n  consumer_group: "scale_{procs}_consumer"\n'
        hosts = []
        try:
            api = Host(exe, plugins, os.path.join(work, "api"), "rocketmq", name_server, role="api",
                       shared_dir=shared, instance="api-1", rocketmq_extra=extra)
            hosts.append(api)
            workers = []
            for i in range(procs):
                w = Host(exe, plugins, os.path.join(work, f"worker-{i}"), "rocketmq", name_server,
                         concurrency=1, role="worker", shared_dir=shared, instance=f"worker-{i}",
                         rocketmq_extra=extra)
                hosts.append(w)
                workers.append(w)
                ready(w)
            templates(api, letter_docx)
            out[f"processes_{procs}"] = run(api, workers, letter, n)
        finally:
            for h in reversed(hosts):
                h.stop()
            shutil.rmtree(work, ignore_errors=True)
    return out


def main():
    exe, plugins, letter_docx, letter_json = sys.argv[1:5]
    n = int(sys.argv[5]) if len(sys.argv) > 5 else 2000
    with open(letter_json) as f:
        letter = json.load(f)
    out = {"tasks": n, "cores": os.cpu_count()}
    try:
        out["embedded"] = embedded(exe, plugins, letter_docx, letter, n)
    except Exception as e:  # report, keep going
        out["embedded"] = {"error": str(e)}
    bin_dir = os.environ.get("EXPORT_HOST_ROCKETMQ_BIN") or os.path.expanduser("~/.cache/export-host/rocketmq/bin")
    if not os.path.exists(os.path.join(bin_dir, "rocketmq-broker-rust")):
        out["rocketmq"] = {"error": f"RocketMQ servers not installed in {bin_dir} (bash scripts/test-deps.d/rocketmq.sh)"}
    else:
        work = tempfile.mkdtemp(prefix="scale-rocketmq-servers-")
        mq = None
        try:
            mq = RocketMQ(bin_dir, work)
            out["rocketmq"] = rocketmq(exe, plugins, letter_docx, letter, n, mq.name_server)
        except Exception as e:
            out["rocketmq"] = {"error": str(e)}
        finally:
            if mq:
                mq.stop()
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
