#!/usr/bin/env python3
"""Data for bench.sh: letter.json and invoice.json (1000 rows) in DIR."""
import json
import os
import sys

d = sys.argv[1]
letter = {
    "company": {"name": "ACME & Sons <Ltd>", "city": "Zürich", "address": "Main Street 1\n8000 Zürich\nSwitzerland"},
    "ref": "R-42", "date": "2024-03-05", "name": "ada lovelace", "items": ["tea", "milk", "bread"],
    "customer_no": "C-1001", "vip": True, "discount": 15, "note": "<b>bold?</b> & \"quoted\"",
    "cjk_name": "张三", "lines": ["first line", "second line"], "total": 123.456, "sender": "Grace",
}
items = [{"name": "Item %d <x&y>" % i, "qty": i % 7 + 1, "price": i * 1.25} for i in range(1, 1001)]
invoice = {"number": "INV-7", "customer": "Zoë & Co", "company": "ACME", "items": items,
           "total": sum(i["qty"] * i["price"] for i in items), "paid": True, "due": "2024-04-01"}
for name, data in [("letter", letter), ("invoice", invoice)]:
    with open(os.path.join(d, name + ".json"), "w") as f:
        json.dump(data, f, ensure_ascii=False)
