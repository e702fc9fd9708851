#!/usr/bin/env python3
"""Time Python docxtpl on a template + data: bench/docx/docxtpl_bench.py T D N.

Prints one JSON line: median and min render+save time in ms over N runs
(after one warm-up) and the peak Python heap of one render (tracemalloc).
"""
import io
import json
import statistics
import sys
import time
import tracemalloc

sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), "../../tests/assets/docx"))
from docxtpl_render import render  # noqa: E402


def main(template, data_path, n):
    with open(data_path) as f:
        data = json.load(f)
    render(template, data, io.BytesIO())  # warm-up (imports, caches)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        render(template, data, io.BytesIO())
        times.append((time.perf_counter() - t) * 1000)
    tracemalloc.start()
    render(template, data, io.BytesIO())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(json.dumps({"median_ms": statistics.median(times), "min_ms": min(times), "peak_heap_mb": peak / 2**20}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
