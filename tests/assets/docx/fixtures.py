#!/usr/bin/env python3
"""Builds the .docx templates of the docx plugin tests with python-docx.

    fixtures.py templates DIR   # the committed templates (tests/assets/docx/*.docx)
    fixtures.py bad DIR         # malicious / broken inputs, made at test time

The templates use docxtpl syntax; every one of them also renders with
docxtpl itself (see tests/docx.rs, compare_with_docxtpl).
"""
import datetime
import io
import os
import sys
import zipfile

from docx import Document
from docx.enum.text import WD_COLOR_INDEX
from docx.shared import Pt, RGBColor


def save(doc, path):
    # python-docx writes the current time into core.xml; pin it so the
    # committed files only change when their content does.
    fixed = datetime.datetime(2024, 1, 1)
    doc.core_properties.created = fixed
    doc.core_properties.modified = fixed
    doc.core_properties.last_printed = fixed
    doc.core_properties.revision = 1
    doc.save(path)


def para(doc_or_cell, *runs):
    """A paragraph from (text, {bold, italic, underline, color}) runs or plain strings."""
    p = doc_or_cell.add_paragraph()
    for r in runs:
        if isinstance(r, str):
            p.add_run(r)
        else:
            text, fmt = r
            run = p.add_run(text)
            run.bold = fmt.get("bold")
            run.italic = fmt.get("italic")
            run.underline = fmt.get("underline")
            if "color" in fmt:
                run.font.color.rgb = RGBColor.from_string(fmt["color"])
            if "size" in fmt:
                run.font.size = Pt(fmt["size"])
            if "highlight" in fmt:
                run.font.highlight_color = WD_COLOR_INDEX.YELLOW
    return p


def letter(path):
    doc = Document()
    sec = doc.sections[0]
    sec.header.paragraphs[0].text = "{{ company.name }} \u2014 {{ company.city }}"
    sec.footer.paragraphs[0].text = "Ref {{ ref }} \u00b7 {{ company.name }}"
    para(doc, ("{{ company.name }}", {"bold": True, "size": 14}))
    para(doc, "{{ company.address }}")
    # Word's typographic quotes inside a tag, as autocorrect writes them.
    para(doc, "Date: {{ date|date(\u201c%d %B %Y\u201d) }}")
    para(doc, "Dear {{ name|title }},")
    para(doc, "Thank you for your order of {{ items|length }} items: {{ items|join(', ') }}.")
    # A tag Word split over three differently formatted runs.
    para(
        doc,
        "Your customer number is ",
        ("{{ custo", {"bold": True}),
        ("mer_", {"italic": True}),
        ("no }}", {"underline": True, "color": "C00000"}),
        ".",
    )
    para(doc, "{%p if vip %}")
    para(doc, "As a VIP customer you get {{ discount }}% off.")
    para(doc, "{%p endif %}")
    para(doc, "{%p if not vip %}")
    para(doc, "Regular terms apply.")
    para(doc, "{%p endif %}")
    para(doc, "Note: {{ note }}")
    para(doc, "\u5ba2\u6237\uff1a{{ cjk_name }}\uff0c\u8c22\u8c22\uff01")
    para(doc, "{%p for line in lines %}")
    para(doc, "{{ loop.index }}. {{ line }}")
    para(doc, "{%p endfor %}")
    para(doc, "{% if total > 100 %}Big order{% else %}Small order{% endif %}: {{ '%.2f'|format(total) }} EUR")
    para(doc, "Kind regards,")
    para(doc, "{{ sender|default('The Team') }}")
    save(doc, path)


def invoice(path):
    doc = Document()
    sec = doc.sections[0]
    sec.header.paragraphs[0].text = "INVOICE {{ number }}"
    sec.footer.paragraphs[0].text = "{{ company }} \u2014 invoice {{ number }}"
    para(doc, ("Invoice {{ number }}", {"bold": True}), " for {{ customer }}")
    t = doc.add_table(rows=5, cols=4)
    t.style = "Table Grid"
    for i, h in enumerate(["#", "Item", "Qty", "Price"]):
        t.cell(0, i).text = h
    t.cell(1, 0).text = "{%tr for it in items %}"
    for i, v in enumerate(["{{ loop.index }}", "{{ it.name }}", "{{ it.qty }}", "{{ '%.2f'|format(it.price) }}"]):
        t.cell(2, i).text = v
    t.cell(3, 0).text = "{%tr endfor %}"
    t.cell(4, 1).text = "Total"
    t.cell(4, 3).text = "{{ '%.2f'|format(total) }}"
    para(doc, "{%p if paid %}")
    para(doc, "Paid \u2014 thank you.")
    para(doc, "{%p endif %}")
    para(doc, "Due {{ due|date('%Y-%m-%d') }}")
    save(doc, path)


def columns(path):
    doc = Document()
    para(doc, "Quarterly figures")
    t = doc.add_table(rows=2, cols=4)
    t.style = "Table Grid"
    t.cell(0, 0).text = "Product"
    t.cell(0, 1).text = "{%tc for q in quarters %}"
    t.cell(0, 2).text = "{{ q.label }}"
    t.cell(0, 3).text = "{%tc endfor %}"
    t.cell(1, 0).text = "{{ product }}"
    t.cell(1, 1).text = "{%tc for q in quarters %}"
    t.cell(1, 2).text = "{{ q.value }}"
    t.cell(1, 3).text = "{%tc endfor %}"
    save(doc, path)


def split(path):
    doc = Document()
    para(
        doc,
        "Hello ",
        ("{{ fir", {"bold": True}),
        ("st_na", {"italic": True}),
        ("me }}", {"underline": True, "color": "FF0000"}),
        "!",
    )
    # Even the braces of the delimiters split apart.
    para(doc, "{", ("{ second ", {"bold": True}), ("}", {"italic": True}), "}")
    # A {%p %} tag split over runs.
    para(doc, "{%", ("p if sh", {"bold": True}), ("ow %}", {"italic": True}))
    para(doc, "Shown only when show is true")
    para(doc, ("{%p en", {"highlight": True}), "dif %}")
    para(doc, "Lines: {{ multiline }}")
    para(doc, "Literal braces: {_{ not a tag }_}")
    save(doc, path)


def nested(path):
    doc = Document()
    para(doc, "Nested tables")
    outer = doc.add_table(rows=1, cols=2)
    outer.style = "Table Grid"
    outer.cell(0, 0).text = "Outer {{ title }}"
    cell = outer.cell(0, 1)
    cell.text = "Inner list:"
    inner = cell.add_table(rows=4, cols=1)
    inner.style = "Table Grid"
    inner.cell(0, 0).text = "Name"
    inner.cell(1, 0).text = "{%tr for x in names %}"
    inner.cell(2, 0).text = "{{ x|upper }}"
    inner.cell(3, 0).text = "{%tr endfor %}"
    para(doc, "After the table: {{ names|length }} names")
    save(doc, path)


FOOTNOTES = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    '<w:footnotes xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
    '<w:footnote w:type="separator" w:id="-1"><w:p><w:r><w:separator/></w:r></w:p></w:footnote>'
    '<w:footnote w:type="continuationSeparator" w:id="0"><w:p><w:r><w:continuationSeparator/></w:r></w:p></w:footnote>'
    '<w:footnote w:id="1"><w:p><w:r><w:t xml:space="preserve">Source: {{ source }}</w:t></w:r></w:p></w:footnote>'
    "</w:footnotes>"
)


def footnotes(path):
    doc = Document()
    p = para(doc, "Body with a footnote for {{ name }}")
    buf = io.BytesIO()
    save(doc, buf)
    zin = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "[Content_Types].xml":
                data = data.replace(
                    b"</Types>",
                    b'<Override PartName="/word/footnotes.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.footnotes+xml"/></Types>',
                )
            elif item.filename == "word/_rels/document.xml.rels":
                data = data.replace(
                    b"</Relationships>",
                    b'<Relationship Id="rIdFn1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/footnotes" Target="footnotes.xml"/></Relationships>',
                )
            elif item.filename == "word/document.xml":
                data = data.replace(
                    b"{{ name }}</w:t></w:r>",
                    b'{{ name }}</w:t></w:r><w:r><w:rPr><w:vertAlign w:val="superscript"/></w:rPr><w:footnoteReference w:id="1"/></w:r>',
                    1,
                )
            zout.writestr(item, data)
        zout.writestr("word/footnotes.xml", FOOTNOTES)


def image(path):
    doc = Document()
    doc.sections[0].header.paragraphs[0].text = "Logo: {{ logo }}"
    para(doc, "Picture: {{ logo }} and again {{ logo }}")
    para(doc, "{%p for p in pics %}")
    para(doc, "{{ p }}")
    para(doc, "{%p endfor %}")
    save(doc, path)


def helpers(path):
    """docxtpl's cell helpers and paragraph merges."""
    doc = Document()
    t = doc.add_table(rows=3, cols=3)
    t.style = "Table Grid"
    t.cell(0, 0).text = "{%tr for r in rows %}"
    t.cell(1, 0).text = "{% vm %}{{ r.group }}"
    t.cell(1, 1).text = "{% cellbg r.color %}{{ r.name }}"
    t.cell(1, 2).text = "{% colspan r.span %}{{ r.v }}"
    t.cell(2, 0).text = "{%tr endfor %}"
    para(doc, "before")
    para(doc, "{%- if rows %} merged with the previous paragraph {% endif -%}")
    para(doc, "and the next")
    t2 = doc.add_table(rows=1, cols=3)
    t2.style = "Table Grid"
    t2.cell(0, 0).text = "{%tc for c in cols %}"
    t2.cell(0, 1).text = "{% hm %}merged {{ c }}"
    t2.cell(0, 2).text = "{%tc endfor %}"
    save(doc, path)


def simple(path, paragraphs):
    doc = Document()
    for p in paragraphs:
        para(doc, p)
    save(doc, path)


def rezip(src, dst, change=None, extra=()):
    """Copy src to dst, passing each entry's bytes through change(name, data)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if change:
                data = change(item.filename, data)
            zout.writestr(item.filename, data)
        for name, data in extra:
            zout.writestr(name, data)


def bad(d):
    base = os.path.join(d, "base.docx")
    simple(base, ["Hello {{ name }}"])
    # Template errors and hostile templates.
    simple(os.path.join(d, "unknown_filter.docx"), ["Hello {{ name|nosuchfilter }}"])
    simple(os.path.join(d, "unclosed_block.docx"), ["{% if name %}", "never closed"])
    simple(os.path.join(d, "unclosed_tag.docx"), ["Hello {{ name"])
    simple(os.path.join(d, "unknown_tag.docx"), ["{% frobnicate %}"])
    doc = Document()
    t = doc.add_table(rows=1, cols=1)
    t.cell(0, 0).text = "{% cellbg name|nosuchfilter %}{{ name }}"
    save(doc, os.path.join(d, "cell_error.docx"))
    simple(os.path.join(d, "level_mismatch.docx"), ["{%p if name %}", "text", "{% endif %}"])
    simple(
        os.path.join(d, "injection.docx"),
        [
            "A{{ ''.__class__ }}B",
            "C{{ name.__class__ }}D",
            "E{{ cycler.__init__ }}F",
            "G{{ self }}H",
            "I{{ config }}J",
            "K{{ name.__dict__ }}L",
            "M{{ range.__globals__ }}N",
        ],
    )
    simple(
        os.path.join(d, "injection_mro.docx"),
        ["{{ ''.__class__.__mro__[1].__subclasses__() }}"],
    )
    simple(
        os.path.join(d, "fuel.docx"),
        ["{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}"],
    )
    simple(
        os.path.join(d, "recursion.docx"),
        ["{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"],
    )
    simple(os.path.join(d, "huge_output.docx"), ["{{ 'x' * 1000000000 }}"])
    # Broken XML and DTDs.
    rezip(base, os.path.join(d, "malformed.docx"),
          lambda n, b: b.replace(b"</w:body>", b"<w:p></w:body>") if n == "word/document.xml" else b)
    laughs = (
        b'<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
        b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
    )
    rezip(base, os.path.join(d, "billion_laughs.docx"),
          lambda n, b: b.replace(b"?>", b"?>" + laughs, 1).replace(b"Hello ", b"Hello &lol3; ")
          if n == "word/document.xml" else b)
    rezip(base, os.path.join(d, "xxe.docx"),
          lambda n, b: b.replace(b"?>", b'?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>', 1)
          .replace(b"Hello ", b"Hello &x; ") if n == "word/document.xml" else b)
    rezip(base, os.path.join(d, "doctype_styles.docx"),
          lambda n, b: b.replace(b"?>", b"?>" + laughs, 1) if n == "word/styles.xml" else b)
    rezip(base, os.path.join(d, "undefined_entity.docx"),
          lambda n, b: b.replace(b"Hello ", b"Hello &nbsp; ") if n == "word/document.xml" else b)
    # ZIP attacks.
    rezip(base, os.path.join(d, "traversal.docx"), extra=[("../../evil.txt", b"pwned")])
    rezip(base, os.path.join(d, "absolute.docx"), extra=[("/etc/cron.d/evil", b"pwned")])
    rezip(base, os.path.join(d, "bomb_ratio.docx"), extra=[("word/media/zeros.bin", b"\0" * (64 << 20))])
    rezip(base, os.path.join(d, "bomb_total.docx"),
          extra=[("word/media/z%03d.bin" % i, b"\0" * (1000 << 10)) for i in range(300)])
    rezip(base, os.path.join(d, "bomb_entries.docx"),
          extra=[("customXml/e%05d.txt" % i, b"") for i in range(5000)])
    with open(os.path.join(d, "not_zip.docx"), "wb") as f:
        f.write(b"This is not a zip file at all, just some text pretending to be a .docx\n" * 10)
    with open(os.path.join(d, "pdf.docx"), "wb") as f:
        f.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")
    with open(base, "rb") as f:
        data = f.read()
    with open(os.path.join(d, "truncated.docx"), "wb") as f:
        f.write(data[: len(data) // 2])
    # A zip that is not a Word document.
    with zipfile.ZipFile(os.path.join(d, "plain_zip.docx"), "w") as z:
        z.writestr("hello.txt", "hi")


if __name__ == "__main__":
    what, d = sys.argv[1], sys.argv[2]
    os.makedirs(d, exist_ok=True)
    if what == "templates":
        letter(os.path.join(d, "letter.docx"))
        invoice(os.path.join(d, "invoice.docx"))
        columns(os.path.join(d, "columns.docx"))
        split(os.path.join(d, "split.docx"))
        nested(os.path.join(d, "nested.docx"))
        footnotes(os.path.join(d, "footnotes.docx"))
        image(os.path.join(d, "image.docx"))
        helpers(os.path.join(d, "helpers.docx"))
    elif what == "bad":
        bad(d)
    else:
        sys.exit("usage: fixtures.py templates|bad DIR")
