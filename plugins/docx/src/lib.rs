//! `docx` plugin: renders docxtpl-compatible Word templates (Jinja inside a
//! .docx) with JSON data, inside the sandbox.
//!
//! Pipeline, each step linear in the size of its input:
//! 1. [`zipio`]: open the package with zip-bomb, traversal and format checks;
//! 2. [`xml`]: parse the parts that hold template text (body, headers,
//!    footers, footnotes, endnotes, core properties) once, strictly (no
//!    DOCTYPE); every other XML part has its prolog checked for a DOCTYPE;
//! 3. [`compile`]: one minijinja template per part, with docxtpl's run
//!    merging and special tags done on the element table;
//! 4. [`engine`]: render with fuel and recursion limits, every value
//!    XML-escaped, newlines as line breaks, images from data;
//! 5. write the package: unchanged entries are copied still compressed.

pub mod compile;
pub mod engine;
pub mod images;
pub mod xml;
pub mod zipio;

use export_host_plugin_kit::*;
use std::collections::HashMap;
use xml::PartKind;

pub const MEDIA_TYPE: &str =
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document";
/// Largest XML part the plugin reads.
pub const MAX_PART_BYTES: usize = 32 << 20;
/// Default work budget of one part's render (minijinja fuel).
pub const DEFAULT_FUEL: u64 = 2_000_000;
pub const MAX_FUEL: u64 = 50_000_000;
pub const RECURSION_LIMIT: usize = 100;
/// Total rendered XML of one document.
pub const MAX_OUTPUT_XML: usize = 96 << 20;

const CT_MAIN: [&str; 4] = [
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.template.main+xml",
    "application/vnd.ms-word.document.macroenabled.main+xml",
    "application/vnd.ms-word.template.macroenabledtemplate.main+xml",
];
const CT_WORD_PARTS: [&str; 4] = [
    "application/vnd.openxmlformats-officedocument.wordprocessingml.header+xml",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.footer+xml",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.footnotes+xml",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.endnotes+xml",
];
const CT_CORE: &str = "application/vnd.openxmlformats-package.core-properties+xml";
const REL_IMAGE: &str = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/image";

pub struct Options {
    pub strict: bool,
    pub fuel: u64,
    pub compression: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            strict: false,
            fuel: DEFAULT_FUEL,
            compression: 1,
        }
    }
}

impl Options {
    pub fn from_request(req: &RenderRequest) -> Result<Options, RenderError> {
        let mut o = Options::default();
        if let Some(v) = req.option("strict") {
            o.strict = v == "true";
        }
        if let Some(v) = req.option("fuel") {
            o.fuel = v
                .parse::<u64>()
                .ok()
                .filter(|f| (1000..=MAX_FUEL).contains(f))
                .ok_or_else(|| {
                    RenderError::unsupported(format!(
                        "option fuel must be a number from 1000 to {MAX_FUEL}, got {v:?}"
                    ))
                })?;
        }
        if let Some(v) = req.option("compression") {
            o.compression = v.parse::<u32>().ok().filter(|l| *l <= 9).ok_or_else(|| {
                RenderError::unsupported(format!(
                    "option compression must be a deflate level from 0 to 9, got {v:?}"
                ))
            })?;
        }
        Ok(o)
    }
}

fn bad_template(msg: impl Into<String>, at: impl Into<String>) -> RenderError {
    RenderError::BadTemplate(ErrorInfo::new(msg).at(at))
}

/// Content types of a package: Default (by extension) and Override (by part).
struct ContentTypes {
    defaults: HashMap<String, String>,
    overrides: HashMap<String, String>,
    src: Vec<u8>,
}

impl ContentTypes {
    fn parse(src: Vec<u8>) -> Result<ContentTypes, RenderError> {
        let doc = xml::parse(&src, PartKind::Other)
            .map_err(|e| bad_template(e.message, "[Content_Types].xml"))?;
        let mut defaults = HashMap::new();
        let mut overrides = HashMap::new();
        for el in &doc.elems {
            let name = &src[el.start as usize + 1..];
            if name.starts_with(b"Default") && !name.starts_with(b"Default_") {
                if let (Some(ext), Some(ct)) = (
                    xml::attr(&src, el, "Extension"),
                    xml::attr(&src, el, "ContentType"),
                ) {
                    defaults.insert(ext.to_ascii_lowercase(), ct.to_ascii_lowercase());
                }
            } else if name.starts_with(b"Override")
                && let (Some(part), Some(ct)) = (
                    xml::attr(&src, el, "PartName"),
                    xml::attr(&src, el, "ContentType"),
                )
            {
                overrides.insert(
                    part.trim_start_matches('/').to_ascii_lowercase(),
                    ct.to_ascii_lowercase(),
                );
            }
        }
        Ok(ContentTypes {
            defaults,
            overrides,
            src,
        })
    }

    fn of(&self, part: &str) -> Option<&str> {
        let lower = part.to_ascii_lowercase();
        if let Some(ct) = self.overrides.get(&lower) {
            return Some(ct);
        }
        let ext = lower.rsplit_once('.').map(|(_, e)| e)?;
        self.defaults.get(ext).map(String::as_str)
    }
}

struct Part {
    entry: usize,
    name: String,
    src: String,
    doc: xml::Doc,
}

/// The `_rels` file of a part: word/document.xml -> word/_rels/document.xml.rels.
fn rels_name(part: &str) -> String {
    match part.rsplit_once('/') {
        Some((dir, file)) => format!("{dir}/_rels/{file}.rels"),
        None => format!("_rels/{part}.rels"),
    }
}

/// Render `template` (.docx bytes) with `data` (JSON object text).
pub fn render_docx(template: &[u8], data: &str, opts: &Options) -> Result<Vec<u8>, RenderError> {
    render_docx_inner(template, data, opts)
}

fn render_docx_inner(template: &[u8], data: &str, opts: &Options) -> Result<Vec<u8>, RenderError> {
    let t0 = std::time::Instant::now();
    // Stage timings for profiling the native build (examples/render.rs).
    let timing = cfg!(not(target_family = "wasm")) && std::env::var_os("DOCX_TIMING").is_some();
    let lap = |what: &str| {
        if timing {
            eprintln!("{what}: {:?}", t0.elapsed());
        }
    };
    let archive = zipio::Archive::open(template).map_err(|e| bad_template(e.0, "template"))?;
    let zerr = |e: zipio::ZipError, at: &str| bad_template(e.0, at);

    let Some(ct_idx) = archive.find("[Content_Types].xml") else {
        return Err(bad_template(
            "the ZIP archive is not a .docx package: it has no [Content_Types].xml",
            "template",
        ));
    };
    let ct_bytes = archive
        .read(ct_idx, MAX_PART_BYTES)
        .map_err(|e| zerr(e, "[Content_Types].xml"))?;
    let content_types = ContentTypes::parse(ct_bytes)?;

    // Read and check every part.
    let mut parts: Vec<Part> = Vec::new();
    let mut has_main = false;
    for (i, e) in archive.entries.iter().enumerate() {
        if e.is_dir() || i == ct_idx {
            continue;
        }
        let ct = content_types.of(&e.name).unwrap_or("");
        let kind = if CT_MAIN.contains(&ct) {
            has_main = true;
            PartKind::Word
        } else if CT_WORD_PARTS.contains(&ct) {
            PartKind::Word
        } else if ct == CT_CORE {
            PartKind::CoreProps
        } else {
            let lower = e.name.to_ascii_lowercase();
            if lower.ends_with(".xml") || lower.ends_with(".rels") || ct.ends_with("xml") {
                check_prolog(&archive, i)?;
            }
            continue;
        };
        let bytes = archive
            .read(i, MAX_PART_BYTES)
            .map_err(|x| zerr(x, &e.name))?;
        let doc = xml::parse(&bytes, kind).map_err(|x| {
            bad_template(
                x.message,
                format!("{}: {}", e.name, context_at(&bytes, x.offset)),
            )
        })?;
        let src = String::from_utf8(bytes)
            .map_err(|_| bad_template("the XML part is not valid UTF-8", e.name.clone()))?;
        parts.push(Part {
            entry: i,
            name: e.name.clone(),
            src,
            doc,
        });
    }
    if !has_main {
        return Err(bad_template(
            "the package has no Word main document part (is it a .docx?)",
            "[Content_Types].xml",
        ));
    }

    lap("read+parse");
    // Compile the parts that hold template text.
    let mut compiled: Vec<(usize, compile::Compiled)> = Vec::new();
    for (pi, p) in parts.iter_mut().enumerate() {
        if !p.doc.has_brace {
            continue;
        }
        let paths = std::mem::take(&mut p.doc.paths);
        let c = compile::compile(&p.src, &p.doc, paths).map_err(|e| compile_error(e, &p.name))?;
        compiled.push((pi, c));
    }

    lap("compile");
    // Data.
    let ctx: minijinja::Value = serde_json::from_str(data)
        .map_err(|e| RenderError::bad_data(format!("data is not valid JSON: {e}")))?;
    if ctx.kind() != minijinja::value::ValueKind::Map {
        return Err(RenderError::bad_data("data must be a JSON object"));
    }

    lap("data");
    // Render.
    let shared = engine::SharedRef::default();
    let limits = engine::Limits {
        fuel: opts.fuel,
        recursion: RECURSION_LIMIT,
        strict: opts.strict,
    };
    let env = engine::environment(shared.clone(), &limits);
    // The package writer exists before the render: parts whose output needs
    // no second pass are deflated while they are rendered.
    let mut w = zipio::Writer::new(template.len() + (64 << 10), opts.compression);
    let mut rendered: HashMap<usize, String> = HashMap::new();
    let mut prepared: HashMap<usize, zipio::Prepared> = HashMap::new();
    let mut total = 0usize;
    let too_large = |name: &str| {
        bad_template(
            format!(
                "the rendered document is larger than {} MiB of XML",
                MAX_OUTPUT_XML >> 20
            ),
            name.to_string(),
        )
    };
    for (pi, c) in &compiled {
        let name = &parts[*pi].name;
        let tmpl = env
            .template_from_named_str(name, &c.source)
            .map_err(|e| engine_error(&e, name, c, &shared, opts))?;
        c.check_structure().map_err(|e| compile_error(e, name))?;
        if !c.has_tc {
            // Table grids (tc) and pictures need the whole text: a part
            // that placed a picture is rendered again below (pictures are
            // deduplicated, so the second render places the same ones).
            if let Ok(mut g) = shared.lock() {
                g.placed = false;
            }
            let mut sink = w.sink(MAX_OUTPUT_XML - total);
            let result = tmpl.render_captured_to(&ctx, &mut sink);
            if sink.exceeded {
                return Err(too_large(name));
            }
            result.map_err(|e| engine_error(&e, name, c, &shared, opts))?;
            let placed = shared.lock().map(|g| g.placed).unwrap_or(true);
            if !placed {
                total += sink.len();
                let p = sink.finish().map_err(|x| RenderError::internal(x.0))?;
                prepared.insert(*pi, p);
                continue;
            }
        }
        let out = tmpl
            .render(&ctx)
            .map_err(|e| engine_error(&e, name, c, &shared, opts))?;
        let out = if c.has_tc {
            match compile::fix_table_grids(&out) {
                Ok(Some(fixed)) => fixed,
                Ok(None) => out,
                Err(e) => {
                    return Err(bad_template(
                        format!("the rendered part is not well-formed XML: {}", e.message),
                        name.clone(),
                    ));
                }
            }
        } else {
            out
        };
        total += out.len();
        if total > MAX_OUTPUT_XML {
            return Err(too_large(name));
        }
        rendered.insert(*pi, out);
    }

    lap("render");
    // Pictures: drawings, media parts, relationships, content types.
    let mut g = shared.lock().unwrap_or_else(|p| p.into_inner());
    let mut next_id = g.next_id.max(engine::FIRST_DRAWING_ID);
    let mut new_entries: Vec<(String, Vec<u8>, bool)> = Vec::new();
    let mut replaced_entries: HashMap<usize, Vec<u8>> = HashMap::new();
    let mut content_types_xml: Option<Vec<u8>> = None;
    if !g.images.placements.is_empty() {
        let mut media_names: Vec<String> = Vec::new();
        for (m, media) in g.images.media.iter().enumerate() {
            let mut n = m + 1;
            let mut name = format!("word/media/docxtpl_image{n}.{}", media.ext);
            while archive.find(&name).is_some() {
                n += 1000;
                name = format!("word/media/docxtpl_image{n}.{}", media.ext);
            }
            media_names.push(name);
        }
        let mut used_exts: Vec<&str> = Vec::new();
        for (pi, out) in rendered.iter_mut() {
            if !out.contains(engine::SENTINEL) {
                continue;
            }
            let part = &parts[*pi].name;
            let rels = rels_name(part);
            let rels_idx = archive.find(&rels);
            let mut rels_xml = match rels_idx {
                Some(i) => String::from_utf8(archive.read(i, MAX_PART_BYTES).map_err(|e| zerr(e, &rels))?)
                    .map_err(|_| bad_template("not UTF-8", rels.clone()))?,
                None => "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<Relationships xmlns=\"http://schemas.openxmlformats.org/package/2006/relationships\"></Relationships>".to_string(),
            };
            let mut rid_of: HashMap<u32, String> = HashMap::new();
            let mut new_rels = String::new();
            let mut result = String::with_capacity(out.len() + 4096);
            let mut rest = out.as_str();
            while let Some(i) = rest.find(engine::SENTINEL) {
                result.push_str(&rest[..i]);
                let after = &rest[i + engine::SENTINEL.len_utf8()..];
                let j = after.find(engine::SENTINEL).unwrap_or(0);
                let idx: usize = after[..j].parse().unwrap_or(usize::MAX);
                let Some(p) = g.images.placements.get(idx).copied() else {
                    return Err(RenderError::internal("image placeholder out of range"));
                };
                let media = &g.images.media[p.media as usize];
                let rid = rid_of.entry(p.media).or_insert_with(|| {
                    let mut rid = format!("rIdDocxtplImage{}", p.media + 1);
                    while rels_xml.contains(&format!("\"{rid}\"")) {
                        rid.push('x');
                    }
                    let target = &media_names[p.media as usize];
                    let target = match part.rsplit_once('/') {
                        Some(("word", _)) => target.trim_start_matches("word/").to_string(),
                        _ => format!("/{target}"),
                    };
                    new_rels.push_str(&format!(
                        "<Relationship Id=\"{rid}\" Type=\"{REL_IMAGE}\" Target=\"{target}\"/>"
                    ));
                    rid
                });
                if !used_exts.contains(&media.ext) {
                    used_exts.push(media.ext);
                }
                images::drawing_xml(&mut result, &p, rid, next_id, media.ext);
                next_id += 1;
                rest = &after[j + engine::SENTINEL.len_utf8()..];
            }
            result.push_str(rest);
            *out = result;
            let Some(close) = rels_xml.rfind("</Relationships>") else {
                return Err(bad_template("malformed relationships part", rels));
            };
            rels_xml.insert_str(close, &new_rels);
            match rels_idx {
                Some(i) => {
                    replaced_entries.insert(i, rels_xml.into_bytes());
                }
                None => new_entries.push((rels, rels_xml.into_bytes(), false)),
            }
        }
        // Media parts actually referenced.
        for (m, media) in g.images.media.iter().enumerate() {
            new_entries.push((media_names[m].clone(), media.bytes.clone(), true));
        }
        let mut ct = String::from_utf8(content_types.src.clone())
            .map_err(|_| bad_template("not UTF-8", "[Content_Types].xml"))?;
        let mut defaults = String::new();
        for ext in used_exts {
            if !content_types.defaults.contains_key(ext) {
                defaults.push_str(&format!(
                    "<Default Extension=\"{ext}\" ContentType=\"image/{ext}\"/>"
                ));
            }
        }
        if !defaults.is_empty() {
            let Some(close) = ct.rfind("</Types>") else {
                return Err(bad_template(
                    "malformed content types",
                    "[Content_Types].xml",
                ));
            };
            ct.insert_str(close, &defaults);
            content_types_xml = Some(ct.into_bytes());
        }
    }
    let _ = next_id;
    g.images = images::Images::default();
    drop(g);

    lap("images");
    // Write the package.
    let by_entry: HashMap<usize, usize> = parts
        .iter()
        .enumerate()
        .map(|(pi, p)| (p.entry, pi))
        .collect();
    for (i, e) in archive.entries.iter().enumerate() {
        if let Some(p) = by_entry.get(&i).and_then(|pi| prepared.get(pi)) {
            w.add_prepared(&e.name, p, e.time, e.date);
            continue;
        }
        let new: Option<&[u8]> = if i == ct_idx {
            content_types_xml.as_deref()
        } else if let Some(b) = replaced_entries.get(&i) {
            Some(b)
        } else {
            by_entry
                .get(&i)
                .and_then(|pi| rendered.get(pi))
                .map(|s| s.as_bytes())
        };
        match new {
            Some(b) => w
                .add(&e.name, b, e.time, e.date, false)
                .map_err(|x| RenderError::internal(x.0))?,
            None => w.copy_raw(&archive, i),
        }
    }
    let (time, date) = archive
        .entries
        .first()
        .map(|e| (e.time, e.date))
        .unwrap_or((0, 0x21));
    for (name, bytes, stored) in &new_entries {
        w.add(name, bytes, time, date, *stored)
            .map_err(|x| RenderError::internal(x.0))?;
    }
    let out = w.finish();
    lap("zip");
    Ok(out)
}

fn check_prolog(archive: &zipio::Archive<'_>, i: usize) -> Result<(), RenderError> {
    let name = &archive.entries[i].name;
    let head = archive
        .read_prefix(i, 256)
        .map_err(|e| bad_template(e.0, name.clone()))?;
    let complete = head.len() as u64 >= archive.entries[i].usize as u64;
    match xml::check_prolog(&head, complete) {
        Err(msg) => Err(bad_template(msg, name.clone())),
        Ok(xml::Prolog::Clean) => Ok(()),
        Ok(xml::Prolog::NeedMore) => {
            let all = archive
                .read(i, MAX_PART_BYTES)
                .map_err(|e| bad_template(e.0, name.clone()))?;
            xml::check_prolog(&all, true)
                .map(|_| ())
                .map_err(|msg| bad_template(msg, name.clone()))
        }
    }
}

/// A few characters of XML around `offset`, for messages.
fn context_at(src: &[u8], offset: usize) -> String {
    let a = offset.saturating_sub(30).min(src.len());
    let b = (offset + 30).min(src.len());
    let s = String::from_utf8_lossy(&src[a..b]);
    format!("byte {offset}, near {s:?}")
}

/// A tag for a message: long ones are cut in the middle.
fn shorten(tag: &str) -> String {
    const MAX: usize = 160;
    if tag.chars().count() <= MAX {
        return tag.to_string();
    }
    let head: String = tag.chars().take(MAX - 40).collect();
    let tail: String = tag.chars().skip(tag.chars().count() - 30).collect();
    format!("{head} … {tail}")
}

fn compile_error(e: compile::CompileError, part: &str) -> RenderError {
    let at = match &e.tag {
        Some(t) => format!("{part}: {}", shorten(t)),
        None => part.to_string(),
    };
    RenderError::BadTemplate(ErrorInfo::new(e.message).at(at))
}

fn engine_error(
    e: &minijinja::Error,
    part: &str,
    c: &compile::Compiled,
    shared: &engine::SharedRef,
    opts: &Options,
) -> RenderError {
    let tag = e.range().and_then(|r| c.tag_at(r.start));
    let at = match tag {
        Some(t) => format!("{part}: {}", shorten(&t.text)),
        None => part.to_string(),
    };
    let data_error = shared
        .lock()
        .map(|mut g| g.data_error.take())
        .unwrap_or(None);
    if let Some(msg) = data_error {
        return RenderError::BadData(ErrorInfo::new(msg).at(at));
    }
    let detail = e.detail().map(str::to_string).unwrap_or_default();
    let message = match e.kind() {
        minijinja::ErrorKind::OutOfFuel => format!(
            "the template does too much work for this data (fuel limit of {} exhausted): a loop, repetition or recursion is too large or never ends",
            opts.fuel
        ),
        kind if detail.is_empty() => kind.to_string(),
        kind => format!("{kind}: {detail}"),
    };
    let info = ErrorInfo::new(message).at(at);
    match e.kind() {
        minijinja::ErrorKind::UndefinedError => RenderError::BadData(info),
        _ => RenderError::BadTemplate(info),
    }
}

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct Docx;

impl Plugin for Docx {
    fn info() -> PluginInfo {
        PluginInfo::new("docx", env!("CARGO_PKG_VERSION")).format(OutputFormat::new(
            "docx",
            MEDIA_TYPE,
            "docx",
            &["docx"],
        ))
    }

    fn render(req: RenderRequest) -> Result<Document, RenderError> {
        if req.format != "docx" {
            return Err(RenderError::unsupported(format!(
                "format {:?} (this plugin renders docx)",
                req.format
            )));
        }
        let opts = Options::from_request(&req)?;
        let bytes = render_docx(&req.template, &req.data, &opts).map_err(|e| {
            // Name the template file when the error has no better place.
            match e {
                RenderError::BadTemplate(mut i) if i.location.as_deref() == Some("template") => {
                    i.location = Some(req.template_name.clone());
                    RenderError::BadTemplate(i)
                }
                other => other,
            }
        })?;
        Ok(Document::new(bytes, MEDIA_TYPE, "docx"))
    }
}

#[cfg(target_arch = "wasm32")]
export_plugin!(Docx);

// Much faster than the default dlmalloc for minijinja's many small allocations.
#[cfg(all(not(target_feature = "atomics"), target_family = "wasm"))]
#[global_allocator]
static TALC: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();
