//! Turns one XML part of a docxtpl template into one minijinja template.
//!
//! docxtpl works with regular expressions on the serialized XML; this does the
//! same transformations on the element table from [`crate::xml`], in one
//! linear pass, and knows where every tag sits in the XML tree:
//!
//! * tags split by Word over several runs are merged into the run where the
//!   tag starts (its formatting is kept), the runs the tag spilled into lose
//!   those characters;
//! * `{%tr %}`, `{%tc %}`, `{%p %}` replace their whole row / cell /
//!   paragraph, `{%r %}` its run; `{{p }}` / `{{r }}` output a value as a
//!   paragraph / run with the original formatting;
//! * `{%-` / `-%}` merge with the previous / next text as in docxtpl;
//! * `{% colspan %}`, `{% cellbg %}`, `{% vm %}`, `{% hm %}` table cell helpers;
//! * every block (`if`/`for`/...) must open and close at the same level of
//!   the XML tree, which makes every rendering well-formed XML whatever the
//!   data (docxtpl would silently write a broken document instead);
//! * literal text can never be taken for template syntax.

use crate::xml::{Doc, Elem, Kind, NONE};
use std::collections::HashMap;

#[derive(Debug)]
pub struct CompileError {
    pub message: String,
    /// The tag as written in the document, if the error is about one.
    pub tag: Option<String>,
}

fn cerr<T>(message: impl Into<String>, tag: Option<&str>) -> Result<T, CompileError> {
    Err(CompileError {
        message: message.into(),
        tag: tag.map(str::to_string),
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Delim {
    Var,
    Block,
    Comment,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Special {
    None,
    Tr,
    Tc,
    P,
    R,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Extra {
    None,
    Colspan,
    Cellbg,
    Vm,
    Hm,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kw {
    None,
    Open { capture: bool },
    Middle,
    Close,
}

#[derive(Debug)]
pub struct Tag {
    /// The tag as written (after merging runs), for messages.
    pub text: String,
    /// The minijinja code emitted for it.
    code: String,
    delim: Delim,
    special: Special,
    extra: Extra,
    kw: Kw,
    keyword: String,
    /// Index into `doc.texts` of the text node holding the tag.
    host: u32,
    lmerge: bool,
    rmerge: bool,
    /// Interned XML path where the tag sits in the output.
    path: u32,
    /// Identity of the text node / element that emits the tag.
    anchor: u32,
    /// Expression of colspan / cellbg.
    arg: String,
}

#[derive(Clone, Copy)]
enum Piece {
    Lit(u32, u32),
    Tag(u32),
}

#[derive(Default)]
struct TextOut {
    pieces: Vec<Piece>,
    touched: bool,
    dropped: bool,
    has_tag: bool,
    /// `{%-`: drop the pieces before this piece index.
    skip_before: usize,
    /// `-%}`: drop the pieces from this index on.
    skip_from: Option<usize>,
}

enum Out {
    /// Copy source XML, protecting `{` from the template engine.
    Xml(u32, u32),
    /// Copy template text (docxtpl's `{_{` escapes resolved).
    Text(u32, u32),
    Raw(&'static str),
    /// A tag's code.
    Tag(u32),
    /// Generated code that belongs to a tag (for error messages).
    TagCode(u32, String),
}

struct Edit {
    start: u32,
    end: u32,
    seq: u32,
    tag: Option<u32>,
    out: Vec<Out>,
}

/// Where a tag's code landed in the generated source.
#[derive(Clone, Copy, Debug)]
pub struct Emitted {
    pub start: usize,
    pub end: usize,
    pub tag: u32,
}

pub struct Compiled {
    pub source: String,
    pub tags: Vec<Tag>,
    pub emitted: Vec<Emitted>,
    /// The part uses `{%tc %}`: table grids may need fixing after rendering.
    pub has_tc: bool,
    /// Paths of emitted tags (checked after the template compiled).
    paths: Vec<(u32, String)>,
}

impl Compiled {
    /// The tag whose generated code covers `offset` of the source.
    pub fn tag_at(&self, offset: usize) -> Option<&Tag> {
        let i = self.emitted.partition_point(|e| e.start <= offset);
        if i == 0 {
            return None;
        }
        let e = self.emitted[i - 1];
        if offset <= e.end {
            Some(&self.tags[(e.tag & 0x7FFF_FFFF) as usize])
        } else {
            None
        }
    }
}

fn ancestor(doc: &Doc, mut e: u32, kind: Kind) -> u32 {
    while e != NONE {
        let el = &doc.elems[e as usize];
        if el.kind == kind {
            return e;
        }
        e = el.parent;
    }
    NONE
}

/// First child of `parent` of kind `kind` (children follow their parent).
fn child(doc: &Doc, parent: u32, kind: Kind) -> u32 {
    let p = &doc.elems[parent as usize];
    let mut i = parent as usize + 1;
    while i < doc.elems.len() && doc.elems[i].start < p.end {
        let el = &doc.elems[i];
        if el.parent == parent && el.kind == kind {
            return i as u32;
        }
        i += 1;
    }
    NONE
}

fn children(doc: &Doc, parent: u32) -> impl Iterator<Item = u32> + '_ {
    let end = doc.elems[parent as usize].end;
    (parent as usize + 1..doc.elems.len())
        .take_while(move |&i| doc.elems[i].start < end)
        .filter(move |&i| doc.elems[i].parent == parent)
        .map(|i| i as u32)
}

fn elem_name<'s>(src: &'s str, el: &Elem) -> &'s str {
    let s = &src[el.start as usize + 1..el.open_end as usize];
    let n = s
        .find(|c: char| c.is_ascii_whitespace() || c == '>' || c == '/')
        .unwrap_or(s.len());
    &s[..n]
}

/// Unescape XML entities of a tag and undo Word's typographic quotes.
fn clean_tag(raw: &str) -> String {
    let un = quick_xml::escape::unescape(raw)
        .map(|c| c.into_owned())
        .unwrap_or_else(|_| raw.to_string());
    if un.is_ascii() {
        return un;
    }
    un.replace(
        ['\u{201C}', '\u{201D}', '\u{201E}', '\u{00AB}', '\u{00BB}'],
        "\"",
    )
    .replace(['\u{2018}', '\u{2019}', '\u{201A}'], "'")
    .replace('\u{00A0}', " ")
}

fn keyword_of(code_inner: &str) -> &str {
    let s = code_inner.trim_start_matches(['-', '+']).trim_start();
    let n = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..n]
}

fn classify_kw(keyword: &str, rest: &str) -> Kw {
    match keyword {
        "if" | "for" | "with" | "autoescape" | "block" => Kw::Open { capture: false },
        "macro" | "call" | "filter" | "raw" => Kw::Open { capture: true },
        "set" => {
            if rest.contains('=') {
                Kw::None
            } else {
                Kw::Open { capture: true }
            }
        }
        "elif" | "else" => Kw::Middle,
        "endif" | "endfor" | "endwith" | "endautoescape" | "endblock" | "endmacro" | "endcall"
        | "endfilter" | "endraw" | "endset" => Kw::Close,
        _ => Kw::None,
    }
}

/// Describe where a path ends, for messages.
fn level_name(paths: &[(u32, String)], path: u32) -> String {
    let name = paths
        .get(path as usize)
        .map(|p| p.1.as_str())
        .unwrap_or("?");
    match name {
        "w:t" => "inside the text of a run".into(),
        "w:body" => "at body level (a whole paragraph or table, e.g. {%p %})".into(),
        "w:tbl" => "at table-row level ({%tr %})".into(),
        "w:tr" => "at table-cell level ({%tc %})".into(),
        "w:p" | "w:hyperlink" => "at run level ({%r %})".into(),
        "w:tc" => "at paragraph level inside a table cell ({%p %})".into(),
        "w:hdr" | "w:ftr" => "at header/footer level ({%p %})".into(),
        other => format!("inside <{other}>"),
    }
}

pub fn compile(
    src: &str,
    doc: &Doc,
    path_names: Vec<(u32, String)>,
) -> Result<Compiled, CompileError> {
    let bytes = src.as_bytes();
    let texts = &doc.texts;
    let mut outs: Vec<TextOut> = Vec::new();
    outs.resize_with(texts.len(), TextOut::default);
    let mut tags: Vec<Tag> = Vec::new();
    let content = |ti: usize| {
        let el = &doc.elems[texts[ti] as usize];
        (el.open_end as usize, el.close_start as usize)
    };
    let is_plain = |ti: usize| doc.elems[texts[ti] as usize].kind == Kind::PlainText;

    // Group text nodes by paragraph (plain text nodes stand alone).
    let mut groups: Vec<Vec<u32>> = Vec::new();
    let mut group_of_para: HashMap<u32, usize> = HashMap::new();
    let mut group_has_brace: Vec<bool> = Vec::new();
    for ti in 0..texts.len() {
        let (a, b) = content(ti);
        let has = memchr::memchr2(b'{', b'}', &bytes[a..b]).is_some();
        let para = if is_plain(ti) {
            NONE
        } else {
            ancestor(doc, texts[ti], Kind::P)
        };
        let g = if para == NONE {
            groups.push(Vec::new());
            group_has_brace.push(false);
            groups.len() - 1
        } else {
            *group_of_para.entry(para).or_insert_with(|| {
                groups.push(Vec::new());
                group_has_brace.push(false);
                groups.len() - 1
            })
        };
        groups[g].push(ti as u32);
        group_has_brace[g] |= has;
    }

    let mut buf: Vec<u8> = Vec::new();
    let mut starts: Vec<usize> = Vec::new();
    for (g, nodes) in groups.iter().enumerate() {
        if !group_has_brace[g] {
            continue;
        }
        buf.clear();
        starts.clear();
        for &ti in nodes {
            let (a, b) = content(ti as usize);
            starts.push(buf.len());
            buf.extend_from_slice(&bytes[a..b]);
            // docxtpl's escapes ({_{ ...) need the text rewritten.
            let t = &bytes[a..b];
            if memchr::memmem::find(t, b"_{").is_some()
                || memchr::memmem::find(t, b"_}").is_some()
                || memchr::memmem::find(t, b"{_").is_some()
            {
                outs[ti as usize].touched = true;
            }
        }
        starts.push(buf.len());
        // Find the tags in the paragraph's text.
        let mut found: Vec<(usize, usize)> = Vec::new();
        let mut k = 0;
        while let Some(i) = memchr::memchr(b'{', &buf[k..]) {
            let s = k + i;
            let close: &[u8] = match buf.get(s + 1) {
                Some(b'{') => b"}}",
                Some(b'%') => b"%}",
                Some(b'#') => b"#}",
                _ => {
                    k = s + 1;
                    continue;
                }
            };
            let Some(j) = memchr::memmem::find(&buf[s + 2..], close) else {
                let shown = String::from_utf8_lossy(&buf[s..buf.len().min(s + 80)]);
                return cerr(
                    format!(
                        "unclosed tag: no {:?} after it in the same paragraph",
                        std::str::from_utf8(close).unwrap_or("")
                    ),
                    Some(&clean_tag(&shown)),
                );
            };
            let e = s + 2 + j + 2;
            found.push((s, e));
            k = e;
        }
        if found.is_empty() {
            continue;
        }
        // Node (index into `nodes`) holding byte `off` of buf.
        let node_at = |off: usize, from: usize| {
            let mut n = from;
            while starts[n + 1] <= off {
                n += 1;
            }
            n
        };
        let src_off =
            |n: usize, off: usize| (content(nodes[n] as usize).0 + off - starts[n]) as u32;
        let mut cur = 0usize; // node of the scan position
        let mut out_node = 0usize; // node receiving output
        let mut pos = 0usize;
        let emit_lit = |outs: &mut Vec<TextOut>,
                        from: usize,
                        to: usize,
                        cur: &mut usize,
                        out_node: &mut usize| {
            let mut at = from;
            while at < to {
                let n = node_at(at, *cur);
                if n != *cur {
                    *cur = n;
                    *out_node = n;
                }
                let seg_end = to.min(starts[n + 1]);
                let o = &mut outs[nodes[*out_node] as usize];
                o.pieces
                    .push(Piece::Lit(src_off(n, at), src_off(n, seg_end)));
                if *out_node != n {
                    o.touched = true;
                }
                at = seg_end;
            }
        };
        for &(s, e) in &found {
            emit_lit(&mut outs, pos, s, &mut cur, &mut out_node);
            let n = node_at(s, cur);
            if n != cur {
                cur = n;
                out_node = n;
            }
            let last = node_at(e - 1, n);
            let host = nodes[out_node];
            let raw = String::from_utf8_lossy(&buf[s..e]);
            let tag_idx = tags.len() as u32;
            tags.push(make_tag(&clean_tag(&raw), host, is_plain(host as usize))?);
            let o = &mut outs[host as usize];
            o.pieces.push(Piece::Tag(tag_idx));
            o.touched = true;
            o.has_tag = true;
            for &dn in &nodes[n + 1..=last] {
                outs[dn as usize].dropped = true;
            }
            if last != n {
                cur = last;
            }
            pos = e;
        }
        emit_lit(&mut outs, pos, buf.len(), &mut cur, &mut out_node);
    }

    let has_tc = tags.iter().any(|t| t.special == Special::Tc);
    let mut edits: Vec<Edit> = Vec::new();
    let mut seq = 0u32;
    let mut push =
        |edits: &mut Vec<Edit>, start: u32, end: u32, tag: Option<u32>, out: Vec<Out>| {
            seq += 1;
            edits.push(Edit {
                start,
                end,
                seq,
                tag,
                out,
            });
        };

    // Special tags: which element each one replaces, and where it sits.
    let mut replaced: Vec<(u32, Vec<u32>)> = Vec::new();
    let mut replaced_idx: HashMap<u32, usize> = HashMap::new();
    // Cells with helpers: (cell, tag) for colspan/cellbg/vm/hm.
    let mut cell_helpers: Vec<(u32, u32)> = Vec::new();
    for t in 0..tags.len() {
        let host_el = texts[tags[t].host as usize];
        let (kind, what) = match tags[t].special {
            Special::Tr => (Kind::Tr, "a table row"),
            Special::Tc => (Kind::Tc, "a table cell"),
            Special::P => (Kind::P, "a paragraph"),
            Special::R => (Kind::R, "a run"),
            Special::None => {
                tags[t].path = doc.elems[host_el as usize].path;
                tags[t].anchor = tags[t].host;
                if tags[t].extra != Extra::None {
                    let cell = ancestor(doc, host_el, Kind::Tc);
                    if cell == NONE {
                        return cerr(
                            format!("`{{% {} %}}` must be inside a table cell", tags[t].keyword),
                            Some(&tags[t].text),
                        );
                    }
                    cell_helpers.push((cell, t as u32));
                }
                continue;
            }
        };
        let target = ancestor(doc, host_el, kind);
        if target == NONE {
            return cerr(
                format!("this tag must be inside {what}"),
                Some(&tags[t].text),
            );
        }
        let parent = doc.elems[target as usize].parent;
        tags[t].path = doc.elems[parent as usize].path;
        tags[t].anchor = target | 0x8000_0000;
        if tags[t].special == Special::R {
            continue;
        }
        match replaced_idx.get(&target) {
            Some(&i) => replaced[i].1.push(t as u32),
            None => {
                replaced_idx.insert(target, replaced.len());
                replaced.push((target, vec![t as u32]));
            }
        }
    }

    // `{%-` / `-%}`: merge with the previous / next document text.
    for t in 0..tags.len() {
        let tag = &tags[t];
        if !(tag.lmerge || tag.rmerge) {
            continue;
        }
        let host = tag.host as usize;
        let piece_idx = outs[host]
            .pieces
            .iter()
            .position(|p| matches!(p, Piece::Tag(x) if *x as usize == t))
            .unwrap_or(0);
        let host_el = doc.elems[texts[host] as usize];
        if tag.lmerge {
            let prev = (0..host).rev().find(|&p| !outs[p].dropped && !is_plain(p));
            if let Some(p) = prev {
                let prev_el = doc.elems[texts[p] as usize];
                if prev_el.path != host_el.path {
                    return cerr(
                        "`{%-` cannot merge this text with the previous text: they are at different levels of the document",
                        Some(&tag.text),
                    );
                }
                outs[host].skip_before = outs[host].skip_before.max(piece_idx);
                outs[p].has_tag = true;
                outs[p].touched = true;
                push(
                    &mut edits,
                    prev_el.close_start,
                    host_el.open_end,
                    Some(t as u32),
                    vec![],
                );
            }
        }
        if tag.rmerge {
            let later_tag = outs[host].pieces[piece_idx + 1..]
                .iter()
                .any(|p| matches!(p, Piece::Tag(_)));
            let next = (host + 1..texts.len()).find(|&p| !outs[p].dropped && !is_plain(p));
            if let (false, Some(nx)) = (later_tag, next) {
                let next_el = doc.elems[texts[nx] as usize];
                if next_el.path != host_el.path {
                    return cerr(
                        "`-%}` cannot merge this text with the next text: they are at different levels of the document",
                        Some(&tag.text),
                    );
                }
                outs[host].skip_from = Some(piece_idx + 1);
                push(
                    &mut edits,
                    host_el.close_start,
                    next_el.open_end,
                    Some(t as u32),
                    vec![],
                );
            }
        }
    }

    // vm: wrap the cell text in `{% if loop.first %}`.
    let mut vm_nodes: HashMap<u32, u32> = HashMap::new();
    for &(_, t) in &cell_helpers {
        if tags[t as usize].extra == Extra::Vm {
            vm_nodes.insert(tags[t as usize].host, t);
        }
    }

    // Text node edits.
    for ti in 0..texts.len() {
        let o = &outs[ti];
        let el = doc.elems[texts[ti] as usize];
        if o.dropped {
            push(&mut edits, el.start, el.end, None, vec![]);
            continue;
        }
        if o.has_tag && !is_plain(ti) {
            let start_tag = &src[el.start as usize..el.open_end as usize];
            if !start_tag.contains("xml:space") {
                let out = if start_tag == "<w:t>" {
                    vec![Out::Raw("<w:t xml:space=\"preserve\">")]
                } else {
                    vec![
                        Out::Xml(el.start, el.start + 4),
                        Out::Raw(" xml:space=\"preserve\""),
                        Out::Xml(el.start + 4, el.open_end),
                    ]
                };
                push(&mut edits, el.start, el.open_end, None, out);
            }
        }
        if !o.touched || el.is_empty() {
            continue;
        }
        let mut out = Vec::with_capacity(o.pieces.len() + 2);
        let vm = vm_nodes.get(&(ti as u32)).copied();
        if let Some(v) = vm {
            out.push(Out::TagCode(v, "{% if loop.first %}".into()));
        }
        let whole = [Piece::Lit(el.open_end, el.close_start)];
        let pieces: &[Piece] = if o.pieces.is_empty() {
            &whole
        } else {
            &o.pieces
        };
        let end = o.skip_from.unwrap_or(pieces.len());
        for p in &pieces[o.skip_before.min(end)..end] {
            match *p {
                Piece::Lit(a, b) => out.push(Out::Text(a, b)),
                Piece::Tag(t) => {
                    let tag = &tags[t as usize];
                    if tag.extra != Extra::None {
                        continue;
                    }
                    if tag.special == Special::R {
                        let run = ancestor(doc, texts[ti], Kind::R);
                        let rpr = child(doc, run, Kind::RPr);
                        out.push(Out::Raw("</w:t></w:r>"));
                        out.push(Out::Tag(t));
                        out.push(Out::Xml(
                            doc.elems[run as usize].start,
                            doc.elems[run as usize].open_end,
                        ));
                        if rpr != NONE {
                            let r = &doc.elems[rpr as usize];
                            out.push(Out::Xml(r.start, r.end));
                        }
                        out.push(Out::Raw("<w:t xml:space=\"preserve\">"));
                    } else {
                        out.push(Out::Tag(t));
                    }
                }
            }
        }
        if let Some(v) = vm {
            out.push(Out::TagCode(v, "{% endif %}".into()));
        }
        push(&mut edits, el.open_end, el.close_start, None, out);
    }

    // Elements replaced by their special tags.
    for (target, ts) in &replaced {
        let el = doc.elems[*target as usize];
        let mut out = Vec::new();
        for &t in ts {
            let tag = &tags[t as usize];
            match (tag.delim, tag.special) {
                (Delim::Comment, _) => {}
                (Delim::Var, Special::P) => {
                    // {{p value }}: the value as a paragraph, formatted as the original.
                    let host_el = texts[tag.host as usize];
                    out.push(Out::Xml(el.start, el.open_end));
                    let ppr = child(doc, *target, Kind::PPr);
                    if ppr != NONE {
                        let p = &doc.elems[ppr as usize];
                        out.push(Out::Xml(p.start, p.end));
                    }
                    out.push(Out::Raw("<w:r>"));
                    let run = ancestor(doc, host_el, Kind::R);
                    if run != NONE {
                        let rpr = child(doc, run, Kind::RPr);
                        if rpr != NONE {
                            let r = &doc.elems[rpr as usize];
                            out.push(Out::Xml(r.start, r.end));
                        }
                    }
                    out.push(Out::Raw("<w:t xml:space=\"preserve\">"));
                    out.push(Out::Tag(t));
                    out.push(Out::Raw("</w:t></w:r></w:p>"));
                }
                _ => out.push(Out::Tag(t)),
            }
        }
        push(&mut edits, el.start, el.end, Some(ts[0]), out);
    }

    // Table cell helpers.
    for &(cell, t) in &cell_helpers {
        cell_helper(src, doc, &tags, cell, t, &mut |s, e, out| {
            push(&mut edits, s, e, Some(t), out)
        })?;
    }

    // Drawing ids must stay unique when a loop repeats a picture.
    for (i, el) in doc.elems.iter().enumerate() {
        if el.kind != Kind::DocPr {
            continue;
        }
        let st = &src[el.start as usize..el.open_end as usize];
        if let Some(a) = st.find(" id=\"") {
            let vstart = a + 5;
            if let Some(len) = st[vstart..].find('"') {
                let s = el.start + vstart as u32;
                push(
                    &mut edits,
                    s,
                    s + len as u32,
                    None,
                    vec![Out::Raw("{{ __docx_id() }}")],
                );
            }
        }
        let _ = i;
    }

    // Order the edits; an edit inside a replaced/deleted range disappears,
    // a partial overlap is a conflict between tags.
    edits.sort_unstable_by(|a, b| {
        a.start
            .cmp(&b.start)
            .then_with(|| (a.end != a.start).cmp(&(b.end != b.start)))
            .then_with(|| b.end.cmp(&a.end))
            .then_with(|| a.seq.cmp(&b.seq))
    });
    let mut kept: Vec<Edit> = Vec::with_capacity(edits.len());
    let mut cur_end = 0u32;
    for e in edits {
        if e.start >= cur_end || kept.is_empty() {
            cur_end = cur_end.max(e.end);
            kept.push(e);
        } else if e.end <= cur_end {
            // subsumed
        } else {
            let which = e
                .tag
                .or(kept.last().and_then(|k| k.tag))
                .map(|t| tags[t as usize].text.clone());
            return cerr(
                "docxtpl tags conflict here: a merge ({%- or -%}) or a {%tr/tc/p/r %} tag would cut through another one's element",
                which.as_deref(),
            );
        }
    }

    // Assemble the template source.
    let mut source = String::with_capacity(src.len() + src.len() / 8 + 256);
    let mut emitted: Vec<Emitted> = Vec::new();
    let mut at = 0usize;
    for e in &kept {
        copy_xml(&mut source, &src[at..e.start as usize]);
        for o in &e.out {
            match o {
                Out::Xml(a, b) => copy_xml(&mut source, &src[*a as usize..*b as usize]),
                Out::Text(a, b) => copy_text(&mut source, &src[*a as usize..*b as usize]),
                Out::Raw(s) => source.push_str(s),
                Out::Tag(t) => {
                    let start = source.len();
                    source.push_str(&tags[*t as usize].code);
                    emitted.push(Emitted {
                        start,
                        end: source.len(),
                        tag: *t,
                    });
                }
                Out::TagCode(t, code) => {
                    let start = source.len();
                    source.push_str(code);
                    emitted.push(Emitted {
                        start,
                        end: source.len(),
                        tag: *t | 0x8000_0000,
                    });
                }
            }
        }
        at = e.end as usize;
    }
    copy_xml(&mut source, &src[at..]);
    Ok(Compiled {
        source,
        tags,
        emitted,
        has_tc,
        paths: path_names,
    })
}

impl Compiled {
    /// Every block must open, continue and close at the same level of the
    /// XML tree, so that any number of repetitions (0, 1, n) stays
    /// well-formed; capturing blocks (macro, set, filter, call, raw) must
    /// stay inside one piece of text.
    pub fn check_structure(&self) -> Result<(), CompileError> {
        let mut stack: Vec<u32> = Vec::new();
        for e in &self.emitted {
            if e.tag & 0x8000_0000 != 0 {
                continue;
            }
            let t = &self.tags[e.tag as usize];
            match t.kw {
                Kw::None => {}
                Kw::Open { .. } => stack.push(e.tag),
                Kw::Middle | Kw::Close => {
                    let Some(&o) = stack.last() else { continue };
                    let open = &self.tags[o as usize];
                    if open.path != t.path {
                        return cerr(
                            format!(
                                "`{}` is {} but the block it belongs to, `{}`, is {}: a block must open and close at the same level, or the document would be broken (use the same {{%tr / {{%tc / {{%p / {{%r prefix on both tags, or none)",
                                t.text,
                                level_name(&self.paths, t.path),
                                open.text,
                                level_name(&self.paths, open.path)
                            ),
                            Some(&t.text),
                        );
                    }
                    if let Kw::Open { capture: true } = open.kw
                        && open.anchor != t.anchor
                    {
                        return cerr(
                            format!(
                                "`{}` ... `{}` must be inside one run of text (one piece of uniformly formatted text): macros, set blocks, filter and call blocks cannot span formatting changes or paragraphs",
                                open.text, t.text
                            ),
                            Some(&open.text),
                        );
                    }
                    if t.kw == Kw::Close {
                        stack.pop();
                    }
                }
            }
        }
        Ok(())
    }

    pub fn tag_text(&self, id: u32) -> &str {
        &self.tags[(id & 0x7FFF_FFFF) as usize].text
    }
}

fn make_tag(text: &str, host: u32, plain: bool) -> Result<Tag, CompileError> {
    let delim = match text.as_bytes()[1] {
        b'{' => Delim::Var,
        b'%' => Delim::Block,
        _ => Delim::Comment,
    };
    let inner = &text[2..text.len() - 2];
    let mut special = Special::None;
    let mut rest = inner;
    if !plain {
        for (p, s) in [
            ("tr ", Special::Tr),
            ("tc ", Special::Tc),
            ("p ", Special::P),
            ("r ", Special::R),
        ] {
            if inner.starts_with(p) && !(delim == Delim::Comment && s == Special::R) {
                special = s;
                rest = &inner[p.len() - 1..];
                break;
            }
        }
    }
    let mut tag = Tag {
        text: text.to_string(),
        code: String::new(),
        delim,
        special,
        extra: Extra::None,
        kw: Kw::None,
        keyword: String::new(),
        host,
        lmerge: false,
        rmerge: false,
        path: 0,
        anchor: 0,
        arg: String::new(),
    };
    match delim {
        Delim::Comment => {
            tag.code = format!("{{#{rest}#}}");
        }
        Delim::Var => {
            match special {
                Special::Tr | Special::Tc => {
                    return cerr(
                        "{{tr ...}} and {{tc ...}} insert docxtpl Python objects, which JSON data cannot provide",
                        Some(text),
                    );
                }
                Special::R => special = Special::None, // a run value: same as {{ }}
                _ => {}
            }
            tag.special = special;
            if plain {
                // Field codes and properties: plain text, no line breaks.
                let (l, body) = match rest.as_bytes().first() {
                    Some(b'-' | b'+') => rest.split_at(1),
                    _ => ("", rest),
                };
                let (body, r) = match body.as_bytes().last() {
                    Some(b'-' | b'+') => body.split_at(body.len() - 1),
                    _ => (body, ""),
                };
                if body.trim().is_empty() {
                    tag.code = format!("{{{{{rest}}}}}");
                } else {
                    tag.code = format!("{{{{{l} ({body})|__docx_plain {r}}}}}");
                }
            } else {
                tag.code = format!("{{{{{rest}}}}}");
            }
        }
        Delim::Block => {
            let mut body = rest;
            if special == Special::None {
                if let Some(b) = body.strip_prefix('-') {
                    tag.lmerge = true;
                    body = b;
                }
                if let Some(b) = body.strip_suffix('-') {
                    tag.rmerge = true;
                    body = b;
                }
            }
            let keyword = keyword_of(body).to_string();
            let after_kw =
                body.trim_start_matches(['-', '+']).trim_start()[keyword.len()..].to_string();
            if special == Special::None && !plain {
                tag.extra = match keyword.as_str() {
                    "colspan" => Extra::Colspan,
                    "cellbg" => Extra::Cellbg,
                    "vm" => Extra::Vm,
                    "hm" => Extra::Hm,
                    _ => Extra::None,
                };
                if matches!(tag.extra, Extra::Colspan | Extra::Cellbg) {
                    tag.arg = after_kw.trim().to_string();
                    if tag.arg.is_empty() {
                        return cerr(format!("`{{% {keyword} %}}` needs a value"), Some(text));
                    }
                }
            }
            tag.kw = if tag.extra == Extra::None {
                classify_kw(&keyword, &after_kw)
            } else {
                Kw::None
            };
            tag.keyword = keyword;
            tag.code = format!("{{%{body}%}}");
        }
    }
    Ok(tag)
}

/// colspan / cellbg / vm / hm: change the cell's properties.
fn cell_helper(
    src: &str,
    doc: &Doc,
    tags: &[Tag],
    cell: u32,
    t: u32,
    push: &mut dyn FnMut(u32, u32, Vec<Out>),
) -> Result<(), CompileError> {
    let tag = &tags[t as usize];
    let cel = doc.elems[cell as usize];
    let tcpr = child(doc, cell, Kind::TcPr);
    // Children of tcPr in schema order; a new property goes before the
    // first existing child that must come after it.
    const ORDER: [&str; 17] = [
        "w:cnfStyle",
        "w:tcW",
        "w:gridSpan",
        "w:hMerge",
        "w:vMerge",
        "w:tcBorders",
        "w:shd",
        "w:noWrap",
        "w:tcMar",
        "w:textDirection",
        "w:tcFitText",
        "w:vAlign",
        "w:hideMark",
        "w:headers",
        "w:cellIns",
        "w:cellDel",
        "w:cellMerge",
    ];
    let rank = |name: &str| ORDER.iter().position(|n| *n == name).unwrap_or(ORDER.len());
    let mut set_prop = |name: &'static str, value_out: Vec<Out>, replace_value_only: bool| {
        if tcpr == NONE {
            let mut out = vec![Out::Raw("<w:tcPr>")];
            out.extend(value_out);
            out.push(Out::Raw("</w:tcPr>"));
            push(cel.open_end, cel.open_end, out);
            return;
        }
        let _ = replace_value_only;
        let my_rank = rank(name);
        let tp = doc.elems[tcpr as usize];
        let mut insert_at = if tp.is_empty() { NONE } else { tp.close_start };
        for c in children(doc, tcpr) {
            let ce = doc.elems[c as usize];
            let cname = elem_name(src, &ce);
            if cname == name {
                push(ce.start, ce.end, value_out);
                return;
            }
            if rank(cname) > my_rank && insert_at == tp.close_start {
                insert_at = ce.start;
            }
        }
        if insert_at == NONE {
            // <w:tcPr/>: rewrite it with the property inside.
            let mut out = vec![Out::Raw("<w:tcPr>")];
            out.extend(value_out);
            out.push(Out::Raw("</w:tcPr>"));
            push(tp.start, tp.end, out);
        } else {
            push(insert_at, insert_at, value_out);
        }
    };
    match tag.extra {
        Extra::Colspan => set_prop(
            "w:gridSpan",
            vec![
                Out::Raw("<w:gridSpan w:val=\""),
                Out::TagCode(t, format!("{{{{ ({})|__docx_attr }}}}", tag.arg)),
                Out::Raw("\"/>"),
            ],
            false,
        ),
        Extra::Cellbg => set_prop(
            "w:shd",
            vec![
                Out::Raw("<w:shd w:val=\"clear\" w:color=\"auto\" w:fill=\""),
                Out::TagCode(t, format!("{{{{ ({})|__docx_attr }}}}", tag.arg)),
                Out::Raw("\"/>"),
            ],
            false,
        ),
        Extra::Vm => set_prop(
            "w:vMerge",
            vec![Out::TagCode(
                t,
                "<w:vMerge w:val=\"{% if loop.first %}restart{% else %}continue{% endif %}\"/>"
                    .into(),
            )],
            false,
        ),
        Extra::Hm => {
            // Keep only the first cell of the loop, spanning all of them.
            let mut span = 1u32;
            if tcpr != NONE {
                for c in children(doc, tcpr) {
                    let ce = doc.elems[c as usize];
                    if elem_name(src, &ce) == "w:gridSpan" {
                        let st = &src[ce.start as usize..ce.open_end as usize];
                        if let Some(v) = st.split('"').nth(1) {
                            span = v.parse().unwrap_or(1);
                        }
                    }
                }
            }
            set_prop(
                "w:gridSpan",
                vec![Out::TagCode(
                    t,
                    format!("<w:gridSpan w:val=\"{{{{ {span} * loop.length }}}}\"/>"),
                )],
                false,
            );
            push(
                cel.start,
                cel.start,
                vec![Out::TagCode(t, "{% if loop.first %}".into())],
            );
            push(
                cel.end,
                cel.end,
                vec![Out::TagCode(t, "{% endif %}".into())],
            );
        }
        Extra::None => {}
    }
    Ok(())
}

/// Copy XML that is not template text: a `{` that jinja could read as the
/// start of a tag is written through an expression instead; U+F8FF (the
/// image placeholder) is written as a character reference.
fn copy_xml(out: &mut String, s: &str) {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(i) = memchr::memchr2(b'{', 0xEF, &b[from..]) {
        let at = from + i;
        out.push_str(&s[from..at]);
        if b[at] == b'{' {
            match b.get(at + 1) {
                Some(b'{' | b'%' | b'#') | None => out.push_str("{{ '{' }}"),
                _ => out.push('{'),
            }
            from = at + 1;
        } else {
            if b.get(at + 1) == Some(&0xA3) && b.get(at + 2) == Some(&0xBF) {
                out.push_str("&#xF8FF;");
            } else {
                out.push_str(&s[at..at + 3]);
            }
            from = at + 3;
        }
    }
    out.push_str(&s[from..]);
}

/// Copy template text: as [`copy_xml`], plus docxtpl's escapes
/// `{_{` `}_}` `{_%` `%_}` for literal `{{` `}}` `{%` `%}`.
fn copy_text(out: &mut String, s: &str) {
    if !s.contains('_') {
        return copy_xml(out, s);
    }
    let mut rest = s;
    while !rest.is_empty() {
        let next = ["{_{", "}_}", "{_%", "%_}"]
            .iter()
            .filter_map(|p| rest.find(p).map(|i| (i, *p)))
            .min();
        match next {
            None => {
                copy_xml(out, rest);
                break;
            }
            Some((i, p)) => {
                copy_xml(out, &rest[..i]);
                out.push_str(match p {
                    "{_{" => "{{ '{{' }}",
                    "{_%" => "{{ '{%' }}",
                    "}_}" => "}}",
                    _ => "%}",
                });
                rest = &rest[i + 3..];
            }
        }
    }
}

/// After `{%tc for %}` a row may have more or fewer cells than the table
/// grid has columns: rewrite each such grid (as docxtpl's fix_tables does),
/// keeping the table's total width.
pub fn fix_table_grids(out: &str) -> Result<Option<String>, crate::xml::XmlError> {
    let doc = crate::xml::parse(out.as_bytes(), crate::xml::PartKind::Word)?;
    let b = out.as_bytes();
    let mut edits: Vec<(u32, u32, String)> = Vec::new();
    for (ti, t) in doc.elems.iter().enumerate() {
        if t.kind != Kind::Tbl {
            continue;
        }
        let ti = ti as u32;
        let Some(grid) = children(&doc, ti).find(|&c| doc.elems[c as usize].kind == Kind::TblGrid)
        else {
            continue;
        };
        let cols: Vec<u32> = children(&doc, grid)
            .filter(|&c| doc.elems[c as usize].kind == Kind::GridCol)
            .collect();
        let mut max_cells = 0u32;
        for tr in children(&doc, ti).filter(|&c| doc.elems[c as usize].kind == Kind::Tr) {
            let mut n = 0u32;
            for tc in children(&doc, tr).filter(|&c| doc.elems[c as usize].kind == Kind::Tc) {
                let mut span = 1;
                let pr = child(&doc, tc, Kind::TcPr);
                if pr != NONE {
                    let gs = child(&doc, pr, Kind::GridSpan);
                    if gs != NONE {
                        span = crate::xml::attr(b, &doc.elems[gs as usize], "w:val")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(1);
                    }
                }
                n += span;
            }
            max_cells = max_cells.max(n);
        }
        if max_cells == 0 || max_cells as usize == cols.len() {
            continue;
        }
        let total: u64 = cols
            .iter()
            .filter_map(|&c| crate::xml::attr(b, &doc.elems[c as usize], "w:w"))
            .filter_map(|w| w.parse::<f64>().ok())
            .map(|w| w as u64)
            .sum();
        let mut g = String::from("<w:tblGrid>");
        for _ in 0..max_cells {
            if total > 0 {
                g.push_str(&format!(
                    "<w:gridCol w:w=\"{}\"/>",
                    total / max_cells as u64
                ));
            } else {
                g.push_str("<w:gridCol/>");
            }
        }
        g.push_str("</w:tblGrid>");
        let ge = &doc.elems[grid as usize];
        edits.push((ge.start, ge.end, g));
    }
    if edits.is_empty() {
        return Ok(None);
    }
    let mut s = String::with_capacity(out.len() + 256);
    let mut at = 0usize;
    for (a, e, r) in edits {
        s.push_str(&out[at..a as usize]);
        s.push_str(&r);
        at = e as usize;
    }
    s.push_str(&out[at..]);
    Ok(Some(s))
}
