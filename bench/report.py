#!/usr/bin/env python3
"""Collect one bench run (scripts/bench.sh) into results.json, or print its
markdown table with every goal of issue 10 checked.

    report.py OUT_DIR N            > bench/results.json
    report.py --table results.json
"""
import json
import os
import re
import sys

NUM = r"([\d.]+)"


def load_json(path):
    try:
        with open(path) as f:
            text = f.read().strip()
        return json.loads(text.splitlines()[-1]) if text else {"error": f"{path} is empty"}
    except (OSError, ValueError, IndexError) as e:
        return {"error": f"{os.path.basename(path)}: {e}"}


def docx(path):
    rows = {}
    try:
        text = open(path).read()
    except OSError as e:
        return {"error": str(e)}
    pat = (rf"^(letter|invoice \(1000 rows\))\s*\|\s*{NUM} ms\s+{NUM} ms\s+{NUM} ms\s+{NUM} ms\s+{NUM} MB"
           rf"\s*\|\s*{NUM} ms\s+{NUM} ms\s+{NUM} MB")
    for m in re.finditer(pat, text, re.M):
        key = "letter" if m.group(1) == "letter" else "invoice"
        v = [float(x) for x in m.groups()[1:]]
        rows[key] = {"median_ms": v[0], "min_ms": v[1], "http_e2e_ms": v[2], "cli_wall_ms": v[3],
                     "server_rss_mb": v[4], "docxtpl_median_ms": v[5], "docxtpl_min_ms": v[6],
                     "docxtpl_heap_mb": v[7]}
    return rows or {"error": "no DOCX figures (see target/bench/docx.txt)"}


def pdf(path):
    rows = {}
    try:
        text = open(path).read()
    except OSError as e:
        return {"error": str(e)}
    pat = rf"^(letter|invoice)\s+{NUM} /\s+{NUM}\s+{NUM} /\s+{NUM}\s+{NUM}\s+{NUM}x(?:\s+{NUM} /\s+{NUM})?"
    for m in re.finditer(pat, text, re.M):
        g = m.groups()
        rows[g[0]] = {"sandbox_min_ms": float(g[1]), "sandbox_median_ms": float(g[2]),
                      "native_min_ms": float(g[3]), "native_median_ms": float(g[4]),
                      "native_first_ms": float(g[5]), "libreoffice_median_ms": float(g[8]) if g[8] else None}
    m = re.search(r"first task after start: server up in (\d+) ms, first PDF (\d+) ms later", text)
    if m:
        rows["first_task"] = {"server_up_ms": int(m.group(1)), "first_pdf_ms": int(m.group(2))}
    return rows or {"error": "no PDF figures (see target/bench/pdf.txt)"}


def profile(path):
    """Top entries of `perf report` per profiled path (bench.sh writes them)."""
    try:
        text = open(path).read()
    except OSError as e:
        return {"error": str(e)}
    out, name = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            name = line[3:].strip()
            out[name] = []
        elif name and re.match(r"^\s*[\d.]+%", line) and len(out[name]) < 8:
            pct, rest = line.strip().split("%", 1)
            out[name].append({"percent": float(pct), "symbol": rest.strip()})
    return out or {"error": "no profile (perf not usable here?)"}


def collect(out, n):
    return {
        "tasks": n,
        "sandbox": load_json(os.path.join(out, "sandbox.json")),
        "e2e_noop_sync_full": load_json(os.path.join(out, "full.json")),
        "e2e_noop_sync_normal": load_json(os.path.join(out, "normal.json")),
        "e2e_wrk": load_json(os.path.join(out, "e2e.json")),
        "scaling": load_json(os.path.join(out, "scaling.json")),
        "profile": profile(os.path.join(out, "profile.txt")),
        "docx": docx(os.path.join(out, "docx.txt")),
        "pdf": pdf(os.path.join(out, "pdf.txt")),
    }


def verdict(value, goal, higher_is_better):
    """'met' or 'missed by …' (a factor for rates, a percentage otherwise)."""
    if value is None:
        return "not measured"
    ok = value >= goal if higher_is_better else value <= goal
    if ok:
        return "met"
    if higher_is_better:
        if value * 2 >= goal:
            return f"**missed by {100 * (1 - value / goal):.0f} %**"
        return f"**missed: {goal / max(value, 1e-9):.1f}× short**"
    return f"**missed by {100 * (value / goal - 1):.0f} %**"


def table(r):
    rows = []

    def row(measure, ours, target, side, check=""):
        rows.append((measure, ours, target, side, check))

    def get(d, *keys):
        for k in keys:
            if not isinstance(d, dict) or k not in d:
                return None
            d = d[k]
        return d

    s = r["sandbox"]
    if "error" not in s:
        row("sandbox overhead p50, pooling (instantiate+call+drop)", f'{s["sandbox_pooling_p50_us"]:.1f} µs',
            "≤ 20 µs", f'{s["sandbox_pooling_p50_us"] / max(s["native_p50_us"], 1e-3):.0f}× a native call '
            f'({s["native_p50_us"]:.2f} µs); p99 {s["sandbox_pooling_p99_us"]:.0f} µs; on demand '
            f'{s["sandbox_on_demand_p50_us"]:.1f} µs', verdict(s["sandbox_pooling_p50_us"], 20, False))
    f, nm = r["e2e_noop_sync_full"], r["e2e_noop_sync_normal"]
    if "error" not in f and "error" not in nm:
        row(f"no-op tasks/s, {f['tasks']} submitted in batches of 1000, embedded sync=full, "
            f"worker.in_flight {f.get('in_flight', '?')}",
            f'{f["e2e_tasks_per_s"]}', "≥ 5,000", f'sync=normal {nm["e2e_tasks_per_s"]}/s '
            f'(full/normal = {f["e2e_tasks_per_s"] / nm["e2e_tasks_per_s"]:.2f}); batch of 1000 accepted in '
            f'{f["submit_batch1000_p50_ms"]} ms p50', verdict(f["e2e_tasks_per_s"], 5000, True))
    w = r["e2e_wrk"]
    e, q = w.get("embedded", {}), w.get("rocketmq", {})
    if "error" in w:
        row("end to end with wrk", w["error"], "", "", "not measured")
    else:
        qerr = q.get("error")

        def mq(key, fmt="{}"):
            return f"RocketMQ {qerr}" if qerr else "RocketMQ " + fmt.format(q.get(key))

        def ratio(key):
            if qerr or not q.get(key) or not e.get(key):
                return ""
            return f" (embedded/RocketMQ {e[key] / q[key]:.2f})"

        row(f"no-op tasks/s end to end, wrk {w['seconds']} s × 8 connections, embedded",
            f'{e.get("noop_tasks_per_s")}', "≥ 5,000", mq("noop_tasks_per_s", "{}/s") + ratio("noop_tasks_per_s"),
            verdict(e.get("noop_tasks_per_s"), 5000, True))
        row("DOCX-letter tasks/s end to end, embedded", f'{e.get("docx_tasks_per_s")}', "≥ 500",
            mq("docx_tasks_per_s", "{}/s") + ratio("docx_tasks_per_s"), verdict(e.get("docx_tasks_per_s"), 500, True))
        row("DOCX-letter tasks/s end to end, RocketMQ", f'{q.get("docx_tasks_per_s")}' if not qerr else "—",
            "≥ 300", "", verdict(None if qerr else q.get("docx_tasks_per_s"), 300, True))
        row(f"submit latency p50 / p99 with a {w['backlog']:,}-task backlog, embedded",
            f'{e.get("submit_p50_ms")} / {e.get("submit_p99_ms")} ms', "p99 ≤ 5 ms",
            (f'backlog {e.get("backlog_at_start")} → {e.get("backlog_at_end")}; ' if e else "")
            + mq("submit_p99_ms", "p99 {} ms") + (f', p50 {q.get("submit_p50_ms")} ms' if not qerr else ""),
            verdict(e.get("submit_p99_ms"), 5, False))
        row(f"time to drain {w['backlog']:,} queued no-op tasks, embedded", f'{e.get("drain_s")} s', "",
            mq("drain_s", "{} s") + ratio("drain_s"))
        row("host RSS idle / peak under load, embedded",
            f'{e.get("rss_idle_mb")} / {e.get("rss_load_peak_mb")} MB', "idle ≤ 60 MB",
            "RocketMQ " + (qerr or f'{q.get("rss_idle_mb")} / {q.get("rss_load_peak_mb")} MB'),
            verdict(e.get("rss_idle_mb"), 60, False))
    sc = r.get("scaling", {})
    if "error" in sc:
        row("scaling", sc["error"], "", "", "not measured")
    elif sc:
        emb, mq = sc.get("embedded", {}), sc.get("rocketmq", {})

        def scale(a, b, key):
            if not isinstance(a, dict) or not isinstance(b, dict) or not a.get(key) or not b.get(key):
                return "—"
            return f'{a[key]} → {b[key]}/s ({b[key] / a[key]:.2f}×)'

        for kind, label in [("docx", "DOCX letter"), ("noop", "no-op")]:
            key = f"{kind}_tasks_per_s"
            e_side = (emb.get("error") or
                      "1 → 2 render threads: " + scale(emb.get("threads_1"), emb.get("threads_2"), key))
            q_side = (mq.get("error") or
                      "1 → 2 worker processes (1 thread each): " +
                      scale(mq.get("processes_1"), mq.get("processes_2"), key))
            row(f"scaling, {label}, {sc['tasks']} tasks, embedded / RocketMQ", e_side, "", q_side)
    d = r["docx"]
    for key, label, goal in [("letter", "DOCX letter render, in a running server", 1.5),
                             ("invoice", "DOCX 1000-row invoice render, in a running server", 3.5)]:
        x = d.get(key)
        if x:
            speed = x["docxtpl_median_ms"] / x["median_ms"]
            row(label, f'{x["median_ms"]:.2f} ms', f"≤ {goal} ms; ≥ 10× docxtpl",
                f'docxtpl {x["docxtpl_median_ms"]:.1f} ms: {speed:.0f}× faster',
                verdict(x["median_ms"], goal, False) + ("" if speed >= 10 else "; **< 10× docxtpl**"))
    p = r["pdf"]
    for key, label, goal in [("letter", "PDF letter, fresh sandbox per task", 10),
                             ("invoice", "PDF 100-row invoice, fresh sandbox per task", 60)]:
        x = p.get(key)
        if x:
            ratio_n = x["sandbox_median_ms"] / x["native_median_ms"]
            lo = x.get("libreoffice_median_ms")
            side = (f'native Typst {x["native_median_ms"]:.1f} ms (cold process {x["native_first_ms"]:.1f} ms): '
                    f'{ratio_n:.1f}× native; LibreOffice ' + (f'{lo:.0f} ms, {lo / x["sandbox_median_ms"]:.0f}× slower'
                                                            if lo else "not installed"))
            check = verdict(x["sandbox_median_ms"], goal, False)
            check += "; ≤ 1.5× native: " + verdict(ratio_n, 1.5, False)
            row(label, f'{x["sandbox_median_ms"]:.1f} ms', f"≤ {goal} ms; ≤ 1.5× native", side, check)
    if "first_task" in p:
        ft = p["first_task"]
        row("PDF: first task after start", f'{ft["first_pdf_ms"]} ms', "≤ 1 s",
            f'server up in {ft["server_up_ms"]} ms (precompiled plugin)', verdict(ft["first_pdf_ms"], 1000, False))
    lines = ["| measure | ours | goal | side by side (same run) | goal check |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(str(c) for c in r_) + " |" for r_ in rows]
    return "\n".join(lines)


def main():
    if sys.argv[1] == "--table":
        with open(sys.argv[2]) as f:
            print(table(json.load(f)))
    else:
        print(json.dumps(collect(sys.argv[1], int(sys.argv[2])), indent=2))


if __name__ == "__main__":
    main()
