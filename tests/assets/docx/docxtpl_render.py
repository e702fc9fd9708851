#!/usr/bin/env python3
"""Render a template with Python docxtpl, the reference implementation.

    docxtpl_render.py TEMPLATE DATA.json OUT.docx

Values are auto-escaped (autoescape=True, as the plugin always does) and the
plugin's `date` filter is provided, so the same templates render in both.
"""
import datetime
import json
import sys

import jinja2
from docxtpl import DocxTemplate


def date(value, fmt="%Y-%m-%d"):
    if value is None:
        return ""
    if isinstance(value, (int, float)):
        d = datetime.datetime.fromtimestamp(value, datetime.timezone.utc)
    else:
        d = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return d.strftime(fmt)


def render(template, data, out):
    env = jinja2.Environment(autoescape=True)
    env.filters["date"] = date
    tpl = DocxTemplate(template)
    tpl.render(data, env)
    tpl.save(out)


if __name__ == "__main__":
    with open(sys.argv[2]) as f:
        data = json.load(f)
    render(sys.argv[1], data, sys.argv[3])
