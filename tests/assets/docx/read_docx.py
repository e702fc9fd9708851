#!/usr/bin/env python3
"""Independent reader of a rendered .docx for the tests: python-docx and lxml.

    read_docx.py FILE  -> JSON on stdout

Checks the package first (every XML part well-formed with a strict parser
that resolves no entities, every part has a content type, every internal
relationship target exists) and then reports what a reader sees.
"""
import json
import posixpath
import sys
import zipfile

from docx import Document
from lxml import etree

W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
RELS = "{http://schemas.openxmlformats.org/package/2006/relationships}"
CT = "{http://schemas.openxmlformats.org/package/2006/content-types}"


def check_package(path):
    problems = []
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        bad = z.testzip()
        if bad:
            problems.append("bad CRC in %s" % bad)
        trees = {}
        for n in names:
            if n.endswith(".xml") or n.endswith(".rels"):
                try:
                    trees[n] = etree.fromstring(z.read(n), parser)
                except etree.XMLSyntaxError as e:
                    problems.append("%s is not well-formed: %s" % (n, e))
        ct = trees.get("[Content_Types].xml")
        if ct is None:
            problems.append("no [Content_Types].xml")
        else:
            defaults = {e.get("Extension").lower() for e in ct.iter(CT + "Default")}
            overrides = {e.get("PartName").lstrip("/") for e in ct.iter(CT + "Override")}
            for n in names:
                if n.endswith("/") or n == "[Content_Types].xml":
                    continue
                ext = n.rsplit(".", 1)[-1].lower()
                if n not in overrides and ext not in defaults:
                    problems.append("no content type for %s" % n)
            for o in overrides:
                if o not in names:
                    problems.append("content type override for missing part %s" % o)
        for n, t in trees.items():
            if not n.endswith(".rels"):
                continue
            src_dir = posixpath.dirname(posixpath.dirname(n))
            ids = set()
            for r in t.iter(RELS + "Relationship"):
                if r.get("Id") in ids:
                    problems.append("duplicate relationship id %s in %s" % (r.get("Id"), n))
                ids.add(r.get("Id"))
                if r.get("TargetMode") == "External":
                    continue
                target = r.get("Target")
                full = target.lstrip("/") if target.startswith("/") else posixpath.normpath(posixpath.join(src_dir, target))
                if full not in names:
                    problems.append("relationship %s in %s points to missing %s" % (r.get("Id"), n, full))
        doc_xml = trees.get("word/document.xml")
        breaks = len(list(doc_xml.iter(W + "br"))) if doc_xml is not None else 0
        footnotes = []
        fn = trees.get("word/footnotes.xml")
        if fn is not None:
            for note in fn.iter(W + "footnote"):
                text = "".join(t.text or "" for t in note.iter(W + "t"))
                if text:
                    footnotes.append(text)
        media = sorted(n for n in names if n.startswith("word/media/"))
    return problems, breaks, footnotes, media


def table_json(t):
    rows = []
    for tr in t._tbl.tr_lst:
        cells = []
        for tc in tr.tc_lst:
            from docx.table import _Cell
            c = _Cell(tc, t)
            pr = tc.tcPr
            shd = pr.find(W + "shd") if pr is not None else None
            vm = pr.find(W + "vMerge") if pr is not None else None
            cells.append({
                "text": "\n".join(p.text for p in c.paragraphs),
                "tables": [table_json(x) for x in c.tables],
                "span": tc.grid_span,
                "fill": shd.get(W + "fill") if shd is not None else None,
                "vmerge": (vm.get(W + "val") or "continue") if vm is not None else None,
            })
        rows.append(cells)
    grid = t._tbl.tblGrid
    return {"rows": rows, "grid_cols": len(grid.gridCol_lst) if grid is not None else None}


def main(path):
    problems, breaks, footnotes, media = check_package(path)
    doc = Document(path)
    paragraphs = []
    for p in doc.paragraphs:
        paragraphs.append({
            "text": p.text,
            "runs": [
                {"text": r.text, "bold": r.bold, "italic": r.italic, "underline": bool(r.underline)}
                for r in p.runs
            ],
        })
    sec = doc.sections[0]
    out = {
        "problems": problems,
        "paragraphs": paragraphs,
        "tables": [table_json(t) for t in doc.tables],
        "headers": [p.text for s in doc.sections for p in s.header.paragraphs],
        "footers": [p.text for s in doc.sections for p in s.footer.paragraphs],
        "footnotes": footnotes,
        "breaks": breaks,
        "inline_shapes": [{"width": s.width, "height": s.height} for s in doc.inline_shapes],
        "header_drawings": len(sec.header._element.xpath(".//w:drawing")),
        "media": media,
    }
    json.dump(out, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv[1])
