#!/usr/bin/env python3
"""Write letter.docx and invoice.docx equivalent to the Typst benchmark
documents (same data from letter.json / invoice.json: text, a 100-row table,
page numbers "x / N"), for the LibreOffice column of bench.py.

usage: make_docx.py OUT_DIR
"""
import json, os, sys, zipfile
from xml.sax.saxutils import escape

here = os.path.dirname(os.path.abspath(__file__))
W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main" ' \
    'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"'


def run(text, bold=False, size=None):
    props = ("<w:b/>" if bold else "") + (f'<w:sz w:val="{size * 2}"/>' if size else "")
    return f'<w:r>{f"<w:rPr>{props}</w:rPr>" if props else ""}<w:t xml:space="preserve">{escape(str(text))}</w:t></w:r>'


def para(*runs, align=None):
    ppr = f'<w:pPr><w:jc w:val="{align}"/></w:pPr>' if align else ""
    return f"<w:p>{ppr}{''.join(runs)}</w:p>"


def table(header, rows):
    def row(cells, bold=False):
        return "<w:tr>" + "".join(f"<w:tc>{para(run(c, bold=bold))}</w:tc>" for c in cells) + "</w:tr>"
    borders = "".join(f'<w:{s} w:val="single" w:sz="4"/>' for s in ["top", "left", "bottom", "right", "insideH", "insideV"])
    return (f'<w:tbl><w:tblPr><w:tblW w:w="5000" w:type="pct"/><w:tblBorders>{borders}</w:tblBorders></w:tblPr>'
            + row(header, True) + "".join(row(r) for r in rows) + "</w:tbl>")


def field(instr):
    return (f'<w:r><w:fldChar w:fldCharType="begin"/></w:r><w:r><w:instrText> {instr} </w:instrText></w:r>'
            f'<w:r><w:fldChar w:fldCharType="end"/></w:r>')


def write(path, body, footer=None, size=11):
    sect = '<w:sectPr>' + ('<w:footerReference w:type="default" r:id="rIdFooter"/>' if footer else "") + \
        '<w:pgSz w:w="11906" w:h="16838"/><w:pgMar w:top="1134" w:right="1134" w:bottom="1134" w:left="1134"' \
        ' w:header="567" w:footer="567" w:gutter="0"/></w:sectPr>'
    styles = (f'<w:styles {W}><w:docDefaults><w:rPrDefault><w:rPr><w:rFonts w:ascii="DejaVu Serif" w:hAnsi="DejaVu Serif"/>'
              f'<w:sz w:val="{size * 2}"/></w:rPr></w:rPrDefault></w:docDefaults></w:styles>')
    rels = ('<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rIdStyles" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/styles" Target="styles.xml"/>'
            + ('<Relationship Id="rIdFooter" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/footer" Target="footer1.xml"/>' if footer else "")
            + "</Relationships>")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml",
                   '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
                   '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
                   '<Default Extension="xml" ContentType="application/xml"/>'
                   '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/>'
                   '<Override PartName="/word/styles.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.styles+xml"/>'
                   + ('<Override PartName="/word/footer1.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.footer+xml"/>' if footer else "")
                   + "</Types>")
        z.writestr("_rels/.rels",
                   '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
                   '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/>'
                   "</Relationships>")
        z.writestr("word/_rels/document.xml.rels", rels)
        z.writestr("word/styles.xml", styles)
        z.writestr("word/document.xml", f'<?xml version="1.0" encoding="UTF-8"?><w:document {W}><w:body>{body}{sect}</w:body></w:document>')
        if footer:
            z.writestr("word/footer1.xml", f'<?xml version="1.0" encoding="UTF-8"?><w:ftr {W}>{footer}</w:ftr>')


def main(out):
    with open(os.path.join(here, "letter.json")) as f:
        d = json.load(f)
    s, r = d["sender"], d["recipient"]
    body = para(run(s["name"]), align="right") + para(run(s["street"]), align="right") + para(run(s["city"]), align="right")
    body += para() + para(run(r["name"])) + para(run(r["street"])) + para(run(r["city"])) + para()
    body += para(run(d["date"]), align="right") + para(run(d["subject"], bold=True))
    body += para(run(f"Dear {r['name']},")) + "".join(para(run(p)) for p in d["paragraphs"])
    body += para(run("Sincerely,")) + para(run(s["name"]))
    write(os.path.join(out, "letter.docx"), body)

    with open(os.path.join(here, "invoice.json")) as f:
        d = json.load(f)
    body = para(run(d["seller"]["name"], bold=True)) + para(run(d["seller"]["address"]))
    body += para(run(f"Invoice {d['number']}", bold=True), align="right") + para(run(f"Date: {d['date']}"), align="right")
    body += para(run(f"Bill to: {d['customer']['name']}")) + para(run(d["customer"]["address"]))
    rows = [[i + 1, it["description"], it["qty"], it["unit_price"], it["qty"] * it["unit_price"]]
            for i, it in enumerate(d["items"])]
    body += table(["#", "Description", "Qty", "Unit", "Total"], rows)
    body += para(run(f"Total: {sum(r[4] for r in rows)}", bold=True), align="right")
    footer = f'<w:p><w:pPr><w:jc w:val="right"/></w:pPr>{field("PAGE")}{run(" / ")}{field("NUMPAGES")}</w:p>'
    write(os.path.join(out, "invoice.docx"), body, footer, size=9)


if __name__ == "__main__":
    main(sys.argv[1])
