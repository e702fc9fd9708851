#!/usr/bin/env python3
"""PDF benchmark, side by side in one run (see run.sh, which builds everything):

- sandbox: `export-host serve` with the pdf plugin, one fresh sandbox per task
  (as in production), tasks one after the other; the render time is what the
  worker logs per task (instantiate + render); plus the first task after start;
- native: the same plugin crate compiled for the host CPU (bench/pdf/src),
  cold caches per run;
- LibreOffice: `soffice --headless --convert-to pdf` of an equivalent DOCX
  (written by make_docx.py; run.sh installs libreoffice-writer-nogui when it
  is missing): cold = one soffice process per document (profile already
  created), as Carbone/Gotenberg-style one-shot conversions; warm = the
  per-document time when one soffice process converts a batch of copies
  (start-up paid once), the best case of a resident converter.

usage: bench.py EXPORT_HOST PLUGIN_DIR CACHE_DIR NATIVE_BENCH [N]
"""
import json, os, re, shutil, statistics, subprocess, sys, tempfile, time, urllib.request

here = os.path.dirname(os.path.abspath(__file__))
assets = os.path.normpath(os.path.join(here, "..", "..", "tests", "assets", "pdf"))
DOCS = ["letter", "invoice"]


def call(method, url, body=None, ctype="application/json"):
    req = urllib.request.Request(url, data=body, method=method, headers={"content-type": ctype})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def sandbox(binary, plugins, cache, n):
    """{doc: [ms]} and the first task's latency after start (ms)."""
    with tempfile.TemporaryDirectory() as d:
        cfg = os.path.join(d, "config.yaml")
        with open(cfg, "w") as f:
            f.write(f'server:\n  listen: "127.0.0.1:0"\nstorage:\n  data_dir: "{d}/data"\n'
                    f'plugins:\n  dir: "{plugins}"\n  cache_dir: "{cache}"\nworker:\n  concurrency: 1\n')
        log = open(os.path.join(d, "log"), "w+")
        started = time.monotonic()
        p = subprocess.Popen([binary, "serve", "--config", cfg], stdout=subprocess.PIPE, stderr=log,
                             env=dict(os.environ, RUST_LOG="warn,export_host=info", NO_COLOR="1"),
                             text=True)
        try:
            base = None
            for line in p.stdout:
                if line.startswith("export-host listening on "):
                    base = line.split()[-1]
                    break
            assert base, "server did not start"
            listening = time.monotonic()
            # Without a cached snapshot the plugin serves unprepared while the
            # host prepares it in the background: measure the prepared state.
            log.seek(0)
            if "waits_for_prepare=true" in log.read():
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:
                    log.seek(0)
                    if "tasks now start from its snapshot" in log.read():
                        break
                    time.sleep(0.5)
                else:
                    raise SystemExit("the pdf plugin was not prepared within 10 minutes")
            if n == 0:
                return None, None
            data = {}
            for name in DOCS:
                with open(os.path.join(assets, f"{name}.typ"), "rb") as f:
                    call("PUT", f"{base}/api/v1/templates/{name}/{name}.typ", f.read(),
                         "application/octet-stream")
                with open(os.path.join(here, f"{name}.json")) as f:
                    data[name] = json.load(f)
            times, first = {}, None
            for name in DOCS:
                times[name] = []
                for i in range(n + 1):
                    log.seek(0, 2)
                    mark = log.tell()
                    tid = call("POST", f"{base}/api/v1/export", json.dumps(
                        {"template_id": name, "output_format": "pdf", "data": data[name]}).encode()
                    )["data"]["task_id"]
                    while True:
                        st = call("GET", f"{base}/api/v1/tasks/{tid}")["data"]["status"]
                        if st in ("succeeded", "failed", "dead"):
                            break
                        time.sleep(0.002)
                    assert st == "succeeded", st
                    if first is None:
                        first = (listening - started, time.monotonic() - listening)
                    time.sleep(0.03)
                    log.seek(mark)
                    found = re.findall(r"elapsed_ms=([0-9.]+)", log.read())
                    if i > 0 and found:  # the first of each kind warms the page cache
                        times[name].append(float(found[-1]))
            return times, first
        finally:
            p.terminate()
            p.wait()


def native(binary, n):
    """{doc: (min, median, first)}; one process per document, so `first` is
    cold like every fresh sandbox."""
    times = {}
    for name in DOCS:
        args = [binary, "/usr/share/fonts", str(n),
                os.path.join(assets, f"{name}.typ"), os.path.join(here, f"{name}.json")]
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = re.match(r"native (\w+)\.typ: min ([0-9.]+) ms, median ([0-9.]+) ms.*first run ([0-9.]+) ms", line)
            if m:
                times[m.group(1)] = (float(m.group(2)), float(m.group(3)), float(m.group(4)))
    return times


def libreoffice(n):
    """({doc: [cold ms]}, {doc: warm ms per document}) or None."""
    soffice = shutil.which("soffice") or shutil.which("libreoffice")
    if not soffice:
        return None
    cold, warm = {}, {}
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, os.path.join(here, "make_docx.py"), d], check=True)
        profile = f"file://{d}/profile"

        def convert(files, outdir):
            start = time.monotonic()
            subprocess.run([soffice, f"-env:UserInstallation={profile}", "--headless",
                            "--convert-to", "pdf", "--outdir", outdir] + files,
                           check=True, capture_output=True)
            return (time.monotonic() - start) * 1000

        for name in DOCS:
            src = os.path.join(d, f"{name}.docx")
            t = [convert([src], d) for _ in range(max(2, n // 5) + 1)]
            cold[name] = t[1:]  # the first run creates the profile
            # Warm: one process, k copies vs one copy; the difference is k-1
            # conversions without the process start.
            k = max(5, n)
            batch = os.path.join(d, f"batch-{name}")
            os.makedirs(batch, exist_ok=True)
            copies = []
            for i in range(k):
                c = os.path.join(batch, f"{name}-{i}.docx")
                shutil.copy(src, c)
                copies.append(c)
            one = statistics.median([convert([copies[0]], batch) for _ in range(3)])
            many = convert(copies, batch)
            warm[name] = max(many - one, 0.0) / (k - 1)
    return cold, warm


def main():
    binary, plugins, cache, native_bin = sys.argv[1:5]
    n = int(sys.argv[5]) if len(sys.argv) > 5 else 20
    sandbox(binary, plugins, cache, 0)  # the plugin's prepare snapshot, cached
    sb, first = sandbox(binary, plugins, cache, n)
    nat = native(native_bin, n)
    lo = libreoffice(n)
    print(f"\nPDF render times, ms (min / median; sandbox and native over {n} runs)")
    print(f"{'document':<10} {'sandbox':>16} {'native Typst':>16} {'native 1st':>11} {'sandbox/native':>15} {'LibreOffice cold':>17} {'LO/sandbox':>11} {'LO warm':>8} {'LO warm/sandbox':>16}")
    for name in DOCS:
        s = (min(sb[name]), statistics.median(sb[name]))
        nv = nat.get(name, (float("nan"),) * 3)
        row = f"{name:<10} {s[0]:7.1f} / {s[1]:6.1f} {nv[0]:7.1f} / {nv[1]:6.1f} {nv[2]:11.1f} {s[1] / nv[1]:14.2f}x"
        if lo:
            l = (min(lo[0][name]), statistics.median(lo[0][name]))
            w = lo[1][name]
            row += f" {l[0]:8.0f} / {l[1]:6.0f} {l[1] / s[1]:10.0f}x {w:8.0f} {w / s[1]:15.0f}x"
        else:
            row += f" {'not installed':>17} {'-':>11}"
        print(row)
    print(f"first task after start: server up in {first[0] * 1000:.0f} ms, first PDF {first[1] * 1000:.0f} ms later"
          " (precompiled component from the cache)")
    print("native 1st: the first render in a fresh process (cold lazy statics; the sandbox starts from the plugin's prepare snapshot instead)")
    if lo:
        print("LibreOffice cold: one soffice process per document; warm: per document within one soffice process converting a batch")
    if not lo:
        print("LibreOffice: not installed (apt-get install -y libreoffice-writer-nogui) - column skipped")


if __name__ == "__main__":
    main()
