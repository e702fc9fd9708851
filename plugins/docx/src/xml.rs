//! One pass over an XML part: a flat element table with byte offsets, and
//! strict checks (well-formed, no DOCTYPE, only predefined entities).

use quick_xml::Reader;
use quick_xml::events::Event;
use std::collections::HashMap;

pub const NONE: u32 = u32::MAX;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    P,
    R,
    /// `w:t`: document text, where docxtpl tags live.
    T,
    Tr,
    Tc,
    Tbl,
    TcPr,
    PPr,
    RPr,
    /// Text whose tags render as plain text (field codes, core properties).
    PlainText,
    GridSpan,
    Shd,
    VMerge,
    DocPr,
    TblGrid,
    GridCol,
    Other,
}

#[derive(Clone, Copy, Debug)]
pub struct Elem {
    pub kind: Kind,
    pub parent: u32,
    /// Interned path of element names from the root (same names = same id).
    pub path: u32,
    /// Offset of `<` of the start tag.
    pub start: u32,
    /// Offset just after the start tag's `>`.
    pub open_end: u32,
    /// Offset of `<` of the end tag (== `end` for an empty element).
    pub close_start: u32,
    /// Offset just after the end tag.
    pub end: u32,
}

impl Elem {
    pub fn is_empty(&self) -> bool {
        self.open_end == self.end
    }
}

pub struct Doc {
    pub elems: Vec<Elem>,
    /// Text elements (kind T or PlainText) in document order.
    pub texts: Vec<u32>,
    /// Whether a `{` occurs anywhere in the part.
    pub has_brace: bool,
    /// Interned paths: (parent path, element name).
    pub paths: Vec<(u32, String)>,
}

/// The value of attribute `name` of element `el`, unescaped.
pub fn attr(src: &[u8], el: &Elem, name: &str) -> Option<String> {
    let mut inner = &src[el.start as usize + 1..el.open_end as usize - 1];
    if inner.ends_with(b"/") {
        inner = &inner[..inner.len() - 1];
    }
    let name_len = inner
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(inner.len());
    let start =
        quick_xml::events::BytesStart::from_content(std::str::from_utf8(inner).ok()?, name_len);
    let a = start.try_get_attribute(name).ok()??;
    a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
        .ok()
        .map(|c| c.into_owned())
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PartKind {
    /// Body, headers, footers, footnotes, endnotes.
    Word,
    /// docProps/core.xml: the text of a few properties is rendered.
    CoreProps,
    /// Only checked (content types, relationships).
    Other,
}

#[derive(Debug)]
pub struct XmlError {
    pub message: String,
    pub offset: usize,
}

fn xerr<T>(offset: usize, message: impl Into<String>) -> Result<T, XmlError> {
    Err(XmlError {
        message: message.into(),
        offset,
    })
}

fn kind_of(name: &[u8], part: PartKind) -> Kind {
    match part {
        PartKind::Word => match name {
            b"w:p" => Kind::P,
            b"w:r" => Kind::R,
            b"w:t" => Kind::T,
            b"w:tr" => Kind::Tr,
            b"w:tc" => Kind::Tc,
            b"w:tbl" => Kind::Tbl,
            b"w:tcPr" => Kind::TcPr,
            b"w:pPr" => Kind::PPr,
            b"w:rPr" => Kind::RPr,
            b"w:instrText" => Kind::PlainText,
            b"w:gridSpan" => Kind::GridSpan,
            b"w:shd" => Kind::Shd,
            b"w:vMerge" => Kind::VMerge,
            b"wp:docPr" => Kind::DocPr,
            b"w:tblGrid" => Kind::TblGrid,
            b"w:gridCol" => Kind::GridCol,
            _ => Kind::Other,
        },
        PartKind::CoreProps => match name {
            b"dc:title" | b"dc:subject" | b"dc:creator" | b"cp:keywords" | b"dc:description"
            | b"cp:category" | b"dc:identifier" | b"dc:language" | b"cp:contentStatus" => {
                Kind::PlainText
            }
            _ => Kind::Other,
        },
        PartKind::Other => Kind::Other,
    }
}

/// Check that every `&` in `raw` (escaped text or attribute value) starts a
/// predefined entity or a character reference.
pub fn check_refs(raw: &[u8], base: usize) -> Result<(), XmlError> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'&', &raw[from..]) {
        let at = from + i;
        let Some(semi) = memchr::memchr(b';', &raw[at..]) else {
            return xerr(base + at, "'&' without ';' (unescaped ampersand)");
        };
        check_ref_name(&raw[at + 1..at + semi], base + at)?;
        from = at + semi + 1;
    }
    Ok(())
}

fn check_ref_name(name: &[u8], offset: usize) -> Result<(), XmlError> {
    match name {
        b"lt" | b"gt" | b"amp" | b"quot" | b"apos" => Ok(()),
        [b'#', b'x', hex @ ..] if !hex.is_empty() && hex.iter().all(u8::is_ascii_hexdigit) => {
            check_char_ref(
                u32::from_str_radix(std::str::from_utf8(hex).unwrap_or("0"), 16),
                offset,
            )
        }
        [b'#', dec @ ..] if !dec.is_empty() && dec.iter().all(u8::is_ascii_digit) => {
            check_char_ref(
                std::str::from_utf8(dec).unwrap_or("0").parse::<u32>(),
                offset,
            )
        }
        _ => xerr(
            offset,
            format!(
                "undefined entity &{};: only the five predefined XML entities are allowed (no DTD entities)",
                String::from_utf8_lossy(&name[..name.len().min(40)])
            ),
        ),
    }
}

fn check_char_ref<E>(v: Result<u32, E>, offset: usize) -> Result<(), XmlError> {
    match v.ok().and_then(char::from_u32) {
        Some(c) if c == '\t' || c == '\n' || c == '\r' || c >= ' ' => Ok(()),
        _ => xerr(
            offset,
            "character reference to a character XML does not allow",
        ),
    }
}

pub fn parse(src: &[u8], part: PartKind) -> Result<Doc, XmlError> {
    let mut reader = Reader::from_reader(src);
    {
        let c = reader.config_mut();
        c.trim_text(false);
        c.check_end_names = true;
        c.check_comments = true;
        c.expand_empty_elements = false;
        c.allow_dangling_amp = false;
    }
    let mut elems: Vec<Elem> = Vec::with_capacity(src.len() / 40);
    let mut texts = Vec::new();
    let mut stack: Vec<u32> = Vec::with_capacity(32);
    let mut paths: HashMap<(u32, &[u8]), u32> = HashMap::new();
    let mut root_seen = false;
    loop {
        let before = reader.buffer_position() as usize;
        let ev = match reader.read_event() {
            Ok(ev) => ev,
            Err(e) => {
                return xerr(
                    reader.error_position() as usize,
                    format!("malformed XML: {e}"),
                );
            }
        };
        let after = reader.buffer_position() as usize;
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(ev, Event::Empty(_));
                if stack.is_empty() && root_seen {
                    return xerr(before, "malformed XML: more than one root element");
                }
                root_seen = true;
                for a in e.attributes() {
                    let a = a.map_err(|x| XmlError {
                        message: format!("malformed XML attribute: {x}"),
                        offset: before,
                    })?;
                    let v: &[u8] = a.value.as_bytes();
                    if memchr::memchr(b'<', v).is_some() {
                        return xerr(before, "malformed XML: '<' in an attribute value");
                    }
                    check_refs(v, before)?;
                }
                let name = e.name().into_inner();
                // Borrow the name from the source, not from the event.
                let name_start = before + 1;
                let name: &[u8] = &src[name_start..name_start + name.len()];
                let parent = stack.last().copied().unwrap_or(NONE);
                let parent_path = if parent == NONE {
                    NONE
                } else {
                    elems[parent as usize].path
                };
                let next_path = paths.len() as u32;
                let path = *paths.entry((parent_path, name)).or_insert(next_path);
                let kind = kind_of(name, part);
                let idx = elems.len() as u32;
                elems.push(Elem {
                    kind,
                    parent,
                    path,
                    start: before as u32,
                    open_end: after as u32,
                    close_start: after as u32,
                    end: after as u32,
                });
                if matches!(kind, Kind::T | Kind::PlainText) {
                    texts.push(idx);
                }
                if !empty {
                    stack.push(idx);
                }
            }
            Event::End(_) => {
                let Some(idx) = stack.pop() else {
                    return xerr(before, "malformed XML: end tag without start tag");
                };
                let el = &mut elems[idx as usize];
                el.close_start = before as u32;
                el.end = after as u32;
            }
            Event::Text(ref t) => {
                let t: &str = t;
                if stack.is_empty()
                    && t.trim_start_matches('\u{FEFF}')
                        .bytes()
                        .any(|b| !b.is_ascii_whitespace())
                {
                    return xerr(before, "malformed XML: text outside the root element");
                }
            }
            Event::GeneralRef(ref r) => {
                let r: &str = r;
                check_ref_name(r.as_bytes(), before)?;
                if stack.is_empty() {
                    return xerr(before, "malformed XML: reference outside the root element");
                }
            }
            Event::DocType(_) => {
                return xerr(
                    before,
                    "XML DOCTYPE declarations are not allowed in templates (no DTDs, no entities: XXE and entity-expansion protection)",
                );
            }
            Event::Decl(ref d) => {
                if let Some(Ok(enc)) = d.encoding() {
                    let enc = enc.to_ascii_lowercase();
                    if enc != "utf-8" && enc != "utf8" {
                        return xerr(
                            before,
                            format!("XML encoding {enc:?} is not supported (only UTF-8)"),
                        );
                    }
                }
            }
            Event::CData(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return xerr(src.len(), "malformed XML: unclosed element at end of part");
    }
    if !root_seen {
        return xerr(0, "malformed XML: no root element");
    }
    if std::str::from_utf8(src).is_err() {
        return xerr(0, "the XML part is not valid UTF-8");
    }
    let mut names = vec![(NONE, String::new()); paths.len()];
    for ((parent, name), id) in paths {
        names[id as usize] = (parent, String::from_utf8_lossy(name).into_owned());
    }
    Ok(Doc {
        has_brace: memchr::memchr(b'{', src).is_some(),
        elems,
        texts,
        paths: names,
    })
}

/// The outcome of looking at the start of an XML part for a DTD.
pub enum Prolog {
    Clean,
    NeedMore,
}

/// Check the prolog of an XML part the plugin does not otherwise parse:
/// refuse a DOCTYPE (the only place entities can be declared) and UTF-16.
pub fn check_prolog(head: &[u8], complete: bool) -> Result<Prolog, String> {
    if head.starts_with(&[0xFE, 0xFF])
        || head.starts_with(&[0xFF, 0xFE])
        || head.starts_with(&[0, b'<'])
        || head.starts_with(&[b'<', 0])
    {
        return Err("UTF-16 XML parts are not supported (only UTF-8)".into());
    }
    let mut s = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    loop {
        while let [b' ' | b'\t' | b'\r' | b'\n', rest @ ..] = s {
            s = rest;
        }
        if s.is_empty() {
            return Ok(if complete {
                Prolog::Clean
            } else {
                Prolog::NeedMore
            });
        }
        if s.starts_with(b"<?") {
            match memchr::memmem::find(s, b"?>") {
                Some(i) => s = &s[i + 2..],
                None => {
                    return Ok(if complete {
                        Prolog::Clean
                    } else {
                        Prolog::NeedMore
                    });
                }
            }
        } else if s.starts_with(b"<!--") {
            match memchr::memmem::find(&s[4..], b"-->") {
                Some(i) => s = &s[4 + i + 3..],
                None => {
                    return Ok(if complete {
                        Prolog::Clean
                    } else {
                        Prolog::NeedMore
                    });
                }
            }
        } else if s.starts_with(b"<!") || (s.len() < 9 && b"<!DOCTYPE".starts_with(s)) {
            if s.len() < 2 && !complete {
                return Ok(Prolog::NeedMore);
            }
            return Err(
                "XML DOCTYPE declarations are not allowed in templates (no DTDs, no entities: XXE and entity-expansion protection)"
                    .into(),
            );
        } else {
            // The root element (or garbage the consumer will reject): no DTD.
            return Ok(Prolog::Clean);
        }
    }
}
