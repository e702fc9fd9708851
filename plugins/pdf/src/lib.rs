//! `pdf` plugin: renders Typst templates (`.typ`) with the task's JSON data
//! to PDF, inside the sandbox (typst + typst-pdf, no packages, no network,
//! no file system).
//!
//! How the data reaches the template (always as values, never as markup):
//! - `sys.inputs`: the data's top-level object (`sys.inputs.customer.name`),
//!   JSON types mapped to Typst types (null → none, numbers → int/float);
//! - `json("data.json")`: the same data as a file;
//! - base64 data URIs (`data:image/png;base64,...`) become `bytes` in
//!   `sys.inputs` and files under `/data/<key path>`, so both
//!   `image(sys.inputs.logo)` and `image("/data/logo")` work.
//!
//! Fonts come from the host's `fonts` interface: the whole index is read to
//! build Typst's font book (no bytes), and a font file is fetched only when
//! the document uses one of its faces.
//!
//! `prepare` (run once per plugin load, then snapshotted by the host) builds
//! and hashes the font book and warms Typst's lazily initialised tables with
//! a small render, so a task's fresh sandbox starts where a warm native
//! process would.
//!
//! - the template bundle's other files (`image("logo.png")`), read from the
//!   host's `bundle` import when the template uses them.
//!
//! Options: `today` (`YYYY-MM-DD`, the date `datetime.today()` returns;
//! default: the current UTC date), `tagged` (`false` skips the tagged-PDF
//! structure: smaller and faster, less accessible). Every option of the
//! request is readable by the template as `json("options.json")` (an object
//! of strings), e.g. `#let o = json("options.json"); #set page(paper: o.at("paper", default: "a4"))`.

#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod data;
pub mod world;

use export_host_plugin_kit::bindings::export_host::plugin::fonts as host_fonts;
use export_host_plugin_kit::*;
use typst::World;
use typst::diag::{Severity, SourceDiagnostic, Warned};
use typst::foundations::{Bytes, Datetime, Smart};
use typst::syntax::DiagSpanKind;
use typst::text::FontStyle;
use typst_layout::PagedDocument;

use crate::world::{FontSet, FontSource, SandboxWorld};

const MEDIA_TYPE: &str = "application/pdf";

struct Pdf;

impl Plugin for Pdf {
    fn info() -> PluginInfo {
        PluginInfo::new("pdf", env!("CARGO_PKG_VERSION")).format(OutputFormat::new(
            "pdf",
            MEDIA_TYPE,
            "pdf",
            &["typ"],
        ))
    }

    fn render(req: RenderRequest) -> Result<Document, RenderError> {
        if req.format != "pdf" {
            return Err(RenderError::unsupported(format!(
                "format {:?} (this plugin renders \"pdf\")",
                req.format
            )));
        }
        let options = Options::from_request(&req)?;
        let template = req.template_text()?.to_owned();
        let pdf = render(
            &req.template_name,
            template,
            req.data,
            host_font_set(),
            Box::new(HostFonts),
            &options,
        )?;
        Ok(Document::new(pdf, MEDIA_TYPE, "pdf"))
    }
}

// The component's exports (wasm only: their names do not link natively,
// where the crate serves the benchmark and unit tests).
#[cfg(target_arch = "wasm32")]
export_plugin!(Pdf, prepare = prepare);

/// Once per plugin load (the host snapshots the result): the font book, and
/// one small render through compile and PDF export so lazily initialised
/// tables (standard library, text segmentation, hyphenation, PDF writer)
/// are in the snapshot. Memoized results are evicted again.
pub fn prepare() {
    let set = host_font_set();
    warm_up(set, Box::new(HostFonts));
}

/// A small render touching what most documents use: text in the default
/// fonts, a heading, a table, page numbers, JSON data and PDF export. No CJK
/// text: that would copy a large CJK font file into the snapshot's memory.
pub fn warm_up(set: &'static FontSet, fonts: Box<dyn FontSource>) {
    const TEMPLATE: &str = "#set page(numbering: \"1 / 1\")\n#set text(lang: \"en\")\n\
        = Warm-up\nHyphenation and line breaking, #sys.inputs.name.\n\
        #table(columns: 2, [a], [#json(\"data.json\").n])\n";
    let _ = render(
        "warm-up.typ",
        TEMPLATE.into(),
        r#"{"name":"x","n":1}"#.into(),
        set,
        fonts,
        &Options::default(),
    );
    typst::comemo::evict(0);
}

/// Render options, from the request's free-form options.
pub struct Options {
    pub today: Option<Datetime>,
    pub tagged: bool,
    /// Every option of the request (for `options.json`).
    pub all: Vec<(String, String)>,
}

impl Options {
    fn from_request(req: &RenderRequest) -> Result<Options, RenderError> {
        let today = match req.option("today") {
            Some(s) => Some(world::parse_date(s).ok_or_else(|| {
                RenderError::unsupported(format!("option today={s:?}: expected YYYY-MM-DD"))
            })?),
            None => world::today_utc(),
        };
        let tagged = match req.option("tagged") {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(RenderError::unsupported(format!(
                    "option tagged={other:?}: expected true or false"
                )));
            }
        };
        Ok(Options {
            today,
            tagged,
            all: req.options.clone(),
        })
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            today: None,
            tagged: true,
            all: Vec::new(),
        }
    }
}

/// Compile `template` (named `name`) with `data` (JSON text of an object)
/// and export it to PDF.
pub fn render(
    name: &str,
    template: String,
    data: String,
    set: &'static FontSet,
    fonts: Box<dyn FontSource>,
    options: &Options,
) -> Result<Vec<u8>, RenderError> {
    let (world, document) = compile(name, template, data, set, fonts, options)?;
    let pdf_options = typst_pdf::PdfOptions {
        ident: Smart::Custom(name.to_string()),
        // No creation date unless the template sets one (`set document(date: ..)`):
        // the same template and data give the same bytes.
        timestamp: None,
        tagged: options.tagged,
        ..Default::default()
    };
    typst_pdf::pdf(&document, &pdf_options)
        .map_err(|errors| diagnostics_error(&world, name, errors.as_slice()))
}

/// Compile `template` (named `name`) with `data` (JSON text of an object)
/// into laid-out pages.
pub fn compile(
    name: &str,
    template: String,
    data: String,
    set: &'static FontSet,
    fonts: Box<dyn FontSource>,
    options: &Options,
) -> Result<(SandboxWorld, PagedDocument), RenderError> {
    let json: serde_json::Value = serde_json::from_str(&data)
        .map_err(|e| RenderError::bad_data(format!("data is not valid JSON: {e}")))?;
    if !json.is_object() {
        return Err(RenderError::bad_data("data must be a JSON object"));
    }
    let converted = data::convert(&json);
    drop(json);
    let options_json: serde_json::Map<String, serde_json::Value> = options
        .all
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let options_json = serde_json::to_vec(&options_json).unwrap_or_else(|_| b"{}".to_vec());
    let files = [
        ("/data.json".to_string(), Bytes::new(data.into_bytes())),
        ("/options.json".to_string(), Bytes::new(options_json)),
    ]
    .into_iter()
    .chain(converted.files);
    let world = SandboxWorld::new(
        name,
        template,
        converted.inputs,
        files,
        set,
        fonts,
        options.today,
    );
    let Warned { output, .. } = typst::compile::<PagedDocument>(&world);
    match output {
        Ok(document) => Ok((world, document)),
        Err(errors) => Err(diagnostics_error(&world, name, errors.as_slice())),
    }
}

/// The first error as a `bad-template` render error: Typst's message with its
/// hints, at "file:line".
fn diagnostics_error(world: &SandboxWorld, name: &str, errors: &[SourceDiagnostic]) -> RenderError {
    let Some(first) = errors
        .iter()
        .find(|d| d.severity == Severity::Error)
        .or(errors.first())
    else {
        return RenderError::bad_template("compilation failed without a diagnostic");
    };
    let mut message = first.message.to_string();
    for hint in &first.hints {
        message.push_str("; hint: ");
        message.push_str(&hint.v);
    }
    if errors.len() > 1 {
        message.push_str(&format!(" (and {} more errors)", errors.len() - 1));
    }
    let info = ErrorInfo::new(message);
    let info = match location(world, name, first) {
        Some(at) => info.at(at),
        None => info,
    };
    RenderError::BadTemplate(info)
}

/// "file:line" (1-based) of a diagnostic.
fn location(world: &SandboxWorld, name: &str, diag: &SourceDiagnostic) -> Option<String> {
    let span = diag.span;
    let id = span.id()?;
    let file = if id == world.main() {
        name.to_string()
    } else {
        id.vpath().get_without_slash().to_string()
    };
    let line = match span.get() {
        DiagSpanKind::Detached => return Some(file),
        DiagSpanKind::Number { num, sub_range, .. } => {
            let source = world.source(id).ok()?;
            let range = source.range(num, sub_range)?;
            source.lines().byte_to_line(range.start)? + 1
        }
        DiagSpanKind::Range { range, .. } => {
            let bytes = world.file(id).ok()?;
            let end = range.start.min(bytes.len());
            bytes[..end].iter().filter(|&&b| b == b'\n').count() + 1
        }
    };
    Some(format!("{file}:{line}"))
}

/// The host's fonts, read once per instance (in `prepare` when the host
/// snapshots it).
fn host_font_set() -> &'static FontSet {
    static SET: std::sync::OnceLock<FontSet> = std::sync::OnceLock::new();
    SET.get_or_init(|| FontSet::new(host_faces()))
}

/// The host's face index, described for Typst's font book.
fn host_faces() -> Vec<world::Face> {
    host_fonts::faces()
        .into_iter()
        .map(|f| {
            let style = match f.style {
                host_fonts::FontStyle::Normal => FontStyle::Normal,
                host_fonts::FontStyle::Italic => FontStyle::Italic,
                host_fonts::FontStyle::Oblique => FontStyle::Oblique,
            };
            world::face(
                f.id,
                f.index,
                f.family,
                style,
                f.weight,
                f.stretch,
                f.monospace,
                f.serif,
                f.coverage,
            )
        })
        .collect()
}

/// Font bytes through the host's `fonts` interface.
struct HostFonts;

impl FontSource for HostFonts {
    fn data(&self, id: u32) -> Option<Vec<u8>> {
        host_fonts::data(id)
    }

    fn bundle_file(&self, name: &str) -> Option<Vec<u8>> {
        export_host_plugin_kit::bindings::export_host::plugin::bundle::read(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, OnceLock};
    use typst::layout::{Frame, FrameItem};
    use typst::text::Font;
    use world::FontSet;

    /// DejaVu from the system (fonts-dejavu-core/-extra), as the host would
    /// offer it.
    fn fonts() -> (&'static FontSet, Box<dyn FontSource>) {
        static FONTS: OnceLock<(FontSet, Arc<Vec<Vec<u8>>>)> = OnceLock::new();
        let (set, files) = FONTS.get_or_init(|| {
            let dir = std::path::Path::new("/usr/share/fonts/truetype/dejavu");
            let mut paths: Vec<_> = std::fs::read_dir(dir)
                .expect("DejaVu fonts (scripts/test-deps.d/pdf.sh)")
                .map(|e| e.expect("entry").path())
                .collect();
            paths.sort();
            let mut files = Vec::new();
            let mut faces = Vec::new();
            for path in paths {
                let bytes = std::fs::read(&path).expect("font");
                for font in Font::iter(Bytes::new(bytes.clone())) {
                    faces.push(world::Face {
                        id: files.len() as u32,
                        index: font.index(),
                        info: font.info().clone(),
                    });
                    files.push(bytes.clone());
                }
            }
            (FontSet::new(faces), Arc::new(files))
        });
        struct Source(Arc<Vec<Vec<u8>>>);
        impl FontSource for Source {
            fn data(&self, id: u32) -> Option<Vec<u8>> {
                self.0.get(id as usize).cloned()
            }
        }
        (set, Box::new(Source(files.clone())))
    }

    fn text_of(frame: &Frame, out: &mut String) {
        for (_, item) in frame.items() {
            match item {
                FrameItem::Text(t) => out.push_str(&t.text),
                FrameItem::Group(g) => text_of(&g.frame, out),
                _ => {}
            }
        }
    }

    fn render_text(
        template: &str,
        data: serde_json::Value,
        options: &Options,
    ) -> Result<String, RenderError> {
        let (set, source) = fonts();
        let (_, doc) = compile(
            "t.typ",
            template.into(),
            data.to_string(),
            set,
            source,
            options,
        )?;
        let mut out = String::new();
        for page in doc.pages() {
            text_of(&page.frame, &mut out);
        }
        Ok(out)
    }

    fn bad_template(e: RenderError) -> ErrorInfo {
        match e {
            RenderError::BadTemplate(info) => info,
            other => panic!("expected bad-template, got {other:?}"),
        }
    }

    #[test]
    fn values_are_text_not_markup() {
        let text = render_text(
            "#sys.inputs.a|#json(\"data.json\").b|#sys.inputs.n",
            serde_json::json!({ "a": "#panic(1) *x* ]", "b": "$y$ _z_", "n": 7 }),
            &Options::default(),
        )
        .expect("renders");
        assert_eq!(text, "#panic(1) *x* ]|$y$ _z_|7");
    }

    #[test]
    fn today_comes_from_the_option() {
        let options = Options {
            today: world::parse_date("2024-02-29"),
            ..Options::default()
        };
        let text = render_text(
            "#datetime.today().display(\"[day].[month].[year]\")",
            serde_json::json!({}),
            &options,
        )
        .expect("renders");
        assert_eq!(text, "29.02.2024");
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = render_text(
            "a\n\nb #nope(1)\n",
            serde_json::json!({}),
            &Options::default(),
        )
        .expect_err("unknown variable");
        let info = bad_template(e);
        assert_eq!(info.location.as_deref(), Some("t.typ:3"));
        assert!(
            info.message.contains("unknown variable: nope"),
            "{}",
            info.message
        );

        // An error inside data.json is located there.
        let e = render_text(
            "#json(\"data.json\").x.y",
            serde_json::json!({ "x": 1 }),
            &Options::default(),
        )
        .expect_err("field of an int");
        let info = bad_template(e);
        assert_eq!(info.location.as_deref(), Some("t.typ:1"), "{info:?}");
    }

    #[test]
    fn non_object_data_is_bad_data() {
        let (set, source) = fonts();
        let e = render(
            "t.typ",
            "x".into(),
            "[1]".into(),
            set,
            source,
            &Options::default(),
        )
        .expect_err("array");
        assert!(matches!(e, RenderError::BadData(_)), "{e:?}");
    }

    #[test]
    fn equations_use_an_installed_math_font() {
        let (set, source) = fonts();
        let (_, doc) = compile(
            "m.typ",
            "$x^2$".into(),
            "{}".into(),
            set,
            source,
            &Options::default(),
        )
        .expect("math renders with DejaVu Math TeX Gyre standing in");
        assert_eq!(doc.pages().len(), 1);
    }
}
