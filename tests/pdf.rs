//! The pdf plugin (Typst in the sandbox) through the real host over HTTP.
//! Its output is checked with independent tools from Debian (qpdf,
//! poppler-utils: pdftotext, pdffonts, pdfinfo, pdfimages; installed by
//! scripts/test-deps.d/pdf.sh), CJK text with the host's fonts
//! (fonts-noto-cjk).

mod common;

use common::TestServer;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn asset(name: &str) -> PathBuf {
    common::repo_root().join("tests/assets/pdf").join(name)
}

fn asset_text(name: &str) -> String {
    std::fs::read_to_string(asset(name)).expect("asset")
}

/// The first server of this binary precompiles the (large) component; the
/// others wait and then load it from the shared cache instead of compiling
/// it at the same time.
async fn start(extra: &str) -> TestServer {
    start_with(&["pdf"], extra).await
}

async fn start_with(plugins: &[&str], extra: &str) -> TestServer {
    static FIRST: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);
    let mut warmed = FIRST.lock().await;
    let server = TestServer::start(plugins, extra).await;
    *warmed = true;
    server
}

/// Run a tool; panics (with its output) unless it succeeds. Returns stdout.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}); run scripts/test-deps.d/pdf.sh"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn data_uri(png: &str) -> String {
    format!(
        "data:image/png;base64,{}",
        base64(&std::fs::read(asset(png)).expect("png"))
    )
}

/// Render `template` (stored as `file`) with `data`; returns the PDF.
async fn render_ok(s: &TestServer, file: &str, template: &str, data: Value) -> Vec<u8> {
    let id = file.trim_end_matches(".typ");
    let (status, body) = s.put_template(id, file, template.to_string()).await;
    assert_eq!(status, 201, "{body}");
    let task = s.submit(id, "pdf", data).await;
    let done = s.wait_final(&task, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "succeeded", "{done}\n{}", s.log());
    let r = s.result(&task).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/pdf");
    let bytes = r.bytes().await.expect("body").to_vec();
    assert!(bytes.starts_with(b"%PDF-"), "not a PDF");
    bytes
}

/// Render and expect a permanent failure; returns the task's error object.
async fn render_failed(s: &TestServer, file: &str, template: &str, data: Value) -> Value {
    let id = file.trim_end_matches(".typ");
    let (status, body) = s.put_template(id, file, template.to_string()).await;
    assert_eq!(status, 201, "{body}");
    let task = s.submit(id, "pdf", data).await;
    let done = s.wait_final(&task, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["attempts"], 1, "permanent: {done}");
    done["error"].clone()
}

fn save(dir: &Path, name: &str, pdf: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, pdf).expect("write pdf");
    path.to_str().expect("utf-8 path").to_string()
}

/// Text of the PDF (or of one page) with runs of whitespace collapsed.
fn text(path: &str, page: Option<usize>) -> String {
    let page = page.map(|p| p.to_string());
    let mut args = vec![];
    if let Some(p) = &page {
        args.extend(["-f", p.as_str(), "-l", p.as_str()]);
    }
    args.extend([path, "-"]);
    let raw = run("pdftotext", &args);
    raw.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn page_count(path: &str) -> usize {
    run("pdfinfo", &[path])
        .lines()
        .find_map(|l| l.strip_prefix("Pages:"))
        .expect("Pages: line")
        .trim()
        .parse()
        .expect("page count")
}

/// (name, embedded) of every font pdffonts lists.
fn fonts(path: &str) -> Vec<(String, bool)> {
    run("pdffonts", &[path])
        .lines()
        .skip(2) // header and ---- line
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // name type... encoding emb sub uni object-id generation
            assert!(cols.len() >= 7, "unexpected pdffonts line {l:?}");
            (cols[0].to_string(), cols[cols.len() - 5] == "yes")
        })
        .collect()
}

/// (width, height) of every image pdfimages lists.
fn images(path: &str) -> Vec<(u32, u32)> {
    run("pdfimages", &["-list", path])
        .lines()
        .skip(2)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // page num type width height ...
            (
                cols[3].parse().expect("width"),
                cols[4].parse().expect("height"),
            )
        })
        .collect()
}

fn qpdf_check(path: &str) {
    let out = run("qpdf", &["--check", path]);
    assert!(
        out.contains("No syntax or stream encoding errors"),
        "qpdf --check: {out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn report_with_cjk_table_image_and_page_numbers() {
    let s = start("").await;
    let rows: Vec<Value> = (1..=100)
        .map(|n| json!({ "n": n, "item": format!("Widget-{n:03}"), "qty": n % 7 + 1, "amount": (n * 37) % 101 + 1 }))
        .collect();
    let total: i64 = (1..=100).map(|n| (n * 37) % 101 + 1).sum();
    let greeting = "你好，世界！日本語のテキストです。한국어 텍스트.";
    let data = json!({
        "title": "Quarterly report 季度报告",
        "greeting": greeting,
        "closing": "End of report",
        "logo": data_uri("logo.png"),
        "stamp": data_uri("stamp.png"),
        "rows": rows,
    });
    let template = asset_text("report.typ");
    let pdf = render_ok(&s, "report.typ", &template, data.clone()).await;
    let path = save(s.dir.path(), "report.pdf", &pdf);

    qpdf_check(&path);

    let all = text(&path, None);
    for expected in [
        "Quarterly report 季度报告",
        "你好，世界！",
        "日本語のテキストです。",
        "한국어 텍스트.",
        "Widget-001",
        "Widget-050",
        "Widget-100",
        "End of report",
    ] {
        assert!(all.contains(expected), "{expected:?} missing from:\n{all}");
    }
    assert!(
        all.contains(&format!("Total: {total}")),
        "total {total} missing:\n{all}"
    );

    // Page numbers: "Page k of N" on each page, N from an independent reader.
    let pages = page_count(&path);
    assert!(
        pages >= 2,
        "100 rows should need more than one page, got {pages}"
    );
    for page in 1..=pages {
        let t = text(&path, Some(page));
        assert!(
            t.contains(&format!("Page {page} of {pages}")),
            "page {page}: {t}"
        );
    }

    // Every font is embedded, and a CJK face from the host's fonts is among them.
    let fonts = fonts(&path);
    assert!(!fonts.is_empty());
    for (name, embedded) in &fonts {
        assert!(embedded, "font {name} not embedded: {fonts:?}");
    }
    assert!(
        fonts.iter().any(|(name, _)| name.contains("CJK")),
        "no CJK font: {fonts:?}"
    );
    // The equation is set in a math font from the host's fonts.
    assert!(
        fonts.iter().any(|(name, _)| name.contains("Math")),
        "no math font: {fonts:?}"
    );

    // Both images from the data: one through sys.inputs, one as a file.
    let mut imgs = images(&path);
    imgs.sort();
    assert_eq!(imgs, [(16, 16), (40, 20)], "images in the PDF");

    // Same template and data, same bytes (no creation date, stable ids).
    let again = render_ok(&s, "report.typ", &template, data).await;
    assert!(again == pdf, "rendering is deterministic");
}

#[tokio::test(flavor = "multi_thread")]
async fn values_print_literally_never_as_markup() {
    let s = start("").await;
    let template = "#let d = sys.inputs\n\
        Name: #d.name\n\n\
        Note: #json(\"data.json\").note\n\n\
        Markup: #d.markup\n\n\
        Items: #d.items.join(\", \")\n";
    let name = "#panic(\"boom\")";
    let note = "] *bold* [ #let x = 1 ]";
    let markup = "_under_ `raw` $x^2$ <lbl> @ref = heading";
    let data = json!({
        "name": name,
        "note": note,
        "markup": markup,
        "items": ["a]", "#b", "*c*"],
    });
    let pdf = render_ok(&s, "literal.typ", template, data).await;
    let path = save(s.dir.path(), "literal.pdf", &pdf);
    qpdf_check(&path);
    let t = text(&path, None);
    for expected in [
        format!("Name: {name}"),
        format!("Note: {note}"),
        format!("Markup: {markup}"),
        "Items: a], #b, *c*".to_string(),
    ] {
        assert!(t.contains(&expected), "{expected:?} not literal in:\n{t}");
    }
    // `*bold*` did not switch to a bold face.
    let fonts = fonts(&path);
    assert!(
        fonts
            .iter()
            .all(|(n, _)| !n.to_lowercase().contains("bold")),
        "{fonts:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn typst_errors_are_bad_template_with_message_and_line() {
    let s = start("").await;

    let error = render_failed(
        &s,
        "broken.typ",
        "= Title\n\nTotal: #(undefined_thing + 1)\n",
        json!({}),
    )
    .await;
    assert_eq!(error["class"], "bad_template", "{error}");
    assert_eq!(error["retryable"], false, "{error}");
    let message = error["message"].as_str().expect("message");
    assert!(
        message.contains("unknown variable: undefined_thing"),
        "{message}"
    );
    assert!(
        message.contains("broken.typ:3"),
        "line of the error: {message}"
    );

    // A syntax error, on line 2.
    let error = render_failed(&s, "syntax.typ", "Hello\n#let x = (1, 2\n", json!({})).await;
    assert_eq!(error["class"], "bad_template", "{error}");
    let message = error["message"].as_str().expect("message");
    assert!(message.contains("syntax.typ:2"), "{message}");

    // panic() in the template itself (not in the data) is a template error.
    let error = render_failed(
        &s,
        "panics.typ",
        "ok\n\n\n#panic(\"no \" + sys.inputs.what)\n",
        json!({ "what": "invoice number" }),
    )
    .await;
    assert_eq!(error["class"], "bad_template", "{error}");
    let message = error["message"].as_str().expect("message");
    assert!(
        message.contains("no invoice number") && message.contains("panics.typ:4"),
        "{message}"
    );

    // Endless recursion hits Typst's call depth limit: an error, not a crash.
    let error = render_failed(
        &s,
        "recursive.typ",
        "#let f(n) = f(n + 1)\n#f(0)\n",
        json!({}),
    )
    .await;
    assert_eq!(error["class"], "bad_template", "{error}");
    assert!(
        error["message"]
            .as_str()
            .expect("message")
            .contains("recursive.typ:1"),
        "{error}"
    );

    // Packages are not available in the sandbox.
    let error = render_failed(
        &s,
        "package.typ",
        "#import \"@preview/example:0.1.0\": *\n",
        json!({}),
    )
    .await;
    assert_eq!(error["class"], "bad_template", "{error}");

    // Data that is not an object never reaches the plugin (the API refuses
    // it); data a template reads wrongly is reported like any Typst error.
    let error = render_failed(
        &s,
        "field.typ",
        "#sys.inputs.missing.name\n",
        json!({ "present": 1 }),
    )
    .await;
    assert_eq!(error["class"], "bad_template", "{error}");
    assert!(
        error["message"]
            .as_str()
            .expect("message")
            .contains("missing"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn endless_template_is_stopped_by_the_timeout_and_the_server_keeps_serving() {
    let s = start("limits:\n  timeout_ms: 2000\nworker:\n  concurrency: 2\n").await;
    let started = std::time::Instant::now();
    let error = render_failed(
        &s,
        "endless.typ",
        "#let n = 0\n#for i in range(100000) { for j in range(100000) { n += 1 } }\n#n\n",
        json!({}),
    )
    .await;
    assert_eq!(error["class"], "timeout", "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );

    // The server keeps serving: the next document renders.
    let pdf = render_ok(
        &s,
        "after.typ",
        "Still here: #sys.inputs.n\n",
        json!({ "n": 42 }),
    )
    .await;
    let path = save(s.dir.path(), "after.pdf", &pdf);
    assert!(text(&path, None).contains("Still here: 42"));
    let (status, _) = s.get_json("/health").await;
    assert_eq!(status, 200);
}

#[test]
fn cli_render_writes_a_pdf() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    std::fs::copy(common::component("pdf"), plugins.join("pdf.wasm")).expect("copy");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "storage:\n  data_dir: \"{}\"\nplugins:\n  cache_dir: \"{}\"\n",
            dir.path().join("data").display(),
            common::shared_cache_dir().display()
        ),
    )
    .expect("config");
    let data = dir.path().join("d.json");
    std::fs::write(
        &data,
        json!({
            "sender": { "name": "Ada Lovelace", "street": "12 St James's Square", "city": "London" },
            "recipient": { "name": "Charles Babbage", "street": "1 Dorset Street", "city": "London" },
            "date": "10 July 1843",
            "subject": "On the Analytical Engine",
            "paragraphs": ["The engine weaves algebraic patterns.", "#panic() ] *bold* stays text."],
        })
        .to_string(),
    )
    .expect("data");
    let out = dir.path().join("o.pdf");
    let status = Command::new(env!("CARGO_BIN_EXE_export-host"))
        .args(["render", "--config"])
        .arg(&config)
        .arg("--plugins")
        .arg(&plugins)
        .arg("--template")
        .arg(asset("letter.typ"))
        .arg("--data")
        .arg(&data)
        .args(["--format", "pdf", "--out"])
        .arg(&out)
        .env("RUST_LOG", "warn")
        .status()
        .expect("run export-host render");
    assert!(status.success());
    let path = out.to_str().expect("utf-8 path");
    qpdf_check(path);
    assert_eq!(page_count(path), 1);
    let t = text(path, None);
    assert!(t.contains("Dear Charles Babbage,"), "{t}");
    assert!(t.contains("#panic() ] *bold* stays text."), "{t}");
}

/// Submit `body` (an export request); the task's final state.
async fn export_final(s: &TestServer, body: Value) -> Value {
    let (status, resp) = s.post_json("/api/v1/export", &body).await;
    assert_eq!(status, 202, "{resp}");
    let task = resp["data"]["task_id"]
        .as_str()
        .expect("task id")
        .to_string();
    s.wait_final(&task, Duration::from_secs(120)).await
}

async fn result_pdf(s: &TestServer, done: &Value) -> Vec<u8> {
    assert_eq!(done["status"], "succeeded", "{done}\n{}", s.log());
    let task = done["task_id"].as_str().expect("task id");
    let r = s.result(task).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.expect("body").to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn images_from_the_template_bundle() {
    let s = start("").await;
    let template =
        "= Bundled\n#image(\"logo.png\", width: 3cm)\n#image(\"stamp.png\", width: 1cm)\n";
    let (status, body) = s.put_template("bundled", "bundled.typ", template).await;
    assert_eq!(status, 201, "{body}");
    for png in ["logo.png", "stamp.png"] {
        let (status, body) = s
            .put_template("bundled", png, std::fs::read(asset(png)).expect("png"))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    // The bundle lists the template and both assets; a second template kind
    // file would replace the first, assets sit side by side.
    let (_, info) = s.get_json("/api/v1/templates/bundled").await;
    let files: Vec<(String, String)> = info["data"]["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().into(),
                f["kind"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        files,
        [
            ("bundled.typ".to_string(), "typ".to_string()),
            ("logo.png".into(), "png".into()),
            ("stamp.png".into(), "png".into())
        ],
        "{info}"
    );

    let done = export_final(
        &s,
        json!({ "template_id": "bundled", "output_format": "pdf", "data": {} }),
    )
    .await;
    let pdf = result_pdf(&s, &done).await;
    let path = save(s.dir.path(), "bundled.pdf", &pdf);
    qpdf_check(&path);
    let mut imgs = images(&path);
    imgs.sort();
    assert_eq!(imgs, [(16, 16), (40, 20)], "both bundle images in the PDF");

    // A file the bundle does not have is a bad template naming it; so is a
    // path out of the bundle.
    for (name, reference) in [("missing", "nope.png"), ("escape", "../bundled/logo.png")] {
        let (status, body) = s
            .put_template(
                name,
                &format!("{name}.typ"),
                format!("#image(\"{reference}\")\n"),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = s
            .put_template(
                name,
                "logo.png",
                std::fs::read(asset("logo.png")).expect("png"),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let done = export_final(
            &s,
            json!({ "template_id": name, "output_format": "pdf", "data": {} }),
        )
        .await;
        assert_eq!(done["status"], "failed", "{done}");
        let reason = done["error"].to_string();
        assert!(reason.contains("bad_template"), "{reason}");
    }

    // Neither a template kind nor an asset kind: refused, saying which are.
    let (status, body) = s.put_template("bundled", "tool.exe", "MZ").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("asset kinds"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn request_options_reach_the_template() {
    let s = start("").await;
    let template =
        "#let o = json(\"options.json\")\n#set page(paper: o.paper)\nGreeting: #o.greeting\n";
    let (status, body) = s.put_template("opts", "opts.typ", template).await;
    assert_eq!(status, 201, "{body}");
    let done = export_final(
        &s,
        json!({
            "template_id": "opts", "output_format": "pdf", "data": {},
            "options": { "paper": "a5", "greeting": "Hi #panic() *x*" },
        }),
    )
    .await;
    let pdf = result_pdf(&s, &done).await;
    let path = save(s.dir.path(), "opts.pdf", &pdf);
    assert!(text(&path, None).contains("Greeting: Hi #panic() *x*"));
    // A5 is 419.53 x 595.28 pt (pdfinfo, an independent reader).
    let info = run("pdfinfo", &[&path]);
    assert!(info.contains("419.528 x 595.276 pts"), "{info}");

    // The plugin's own options are checked by it: a permanent failure.
    let done = export_final(
        &s,
        json!({ "template_id": "opts", "output_format": "pdf", "data": {},
                "options": { "paper": "a5", "greeting": "x", "today": "yesterday" } }),
    )
    .await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(done["error"].to_string().contains("today"), "{done}");

    // Bad options are a 400 naming the problem, nothing queued.
    let too_many: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("k{i}"), json!("v"))).collect();
    for (options, expected) in [
        (json!({ "bad key": "v" }), "bad key"),
        (json!({ "k": "x".repeat(1025) }), "at most 1024"),
        (Value::Object(too_many), "at most 32"),
        (json!({ "k": 1 }), "expected a string"),
    ] {
        let (status, body) = s
            .post_json(
                "/api/v1/export",
                &json!({ "template_id": "opts", "output_format": "pdf", "data": {}, "options": options }),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["message"].as_str().unwrap().contains(expected),
            "{expected}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pdf_of_a_docx_only_template_is_refused_saying_a_typ_is_needed() {
    let s = start_with(&["pdf", "docx"], "").await;
    let docx =
        std::fs::read(common::repo_root().join("tests/assets/docx/letter.docx")).expect("docx");
    let (status, body) = s.put_template("wordonly", "letter.docx", docx).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = s
        .post_json(
            "/api/v1/export",
            &json!({ "template_id": "wordonly", "output_format": "pdf", "data": {} }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["message"].as_str().expect("message");
    assert!(
        message.contains("pdf") && message.contains("typ"),
        "{message}"
    );
}

#[test]
fn cli_render_with_options_and_a_bundle_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    std::fs::copy(common::component("pdf"), plugins.join("pdf.wasm")).expect("copy");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "storage:\n  data_dir: \"{}\"\nplugins:\n  cache_dir: \"{}\"\n",
            dir.path().join("data").display(),
            common::shared_cache_dir().display()
        ),
    )
    .expect("config");
    // The template's directory is its bundle.
    let template = dir.path().join("t.typ");
    std::fs::write(
        &template,
        "#set page(paper: json(\"options.json\").paper)\n#image(\"logo.png\")\nNamed #sys.inputs.name\n",
    )
    .expect("template");
    std::fs::copy(asset("logo.png"), dir.path().join("logo.png")).expect("logo");
    let data = dir.path().join("d.json");
    std::fs::write(&data, r#"{"name": "Ada"}"#).expect("data");
    let out = dir.path().join("o.pdf");
    let render = |options: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_export-host"));
        cmd.args(["render", "--config"])
            .arg(&config)
            .arg("--plugins")
            .arg(&plugins)
            .arg("--template")
            .arg(&template)
            .arg("--data")
            .arg(&data)
            .args(["--format", "pdf", "--out"])
            .arg(&out)
            .env("RUST_LOG", "warn");
        for o in options {
            cmd.args(["--option", o]);
        }
        cmd.output().expect("run export-host render")
    };
    let ok = render(&["paper=a6"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let path = out.to_str().expect("utf-8 path");
    qpdf_check(path);
    assert!(text(path, None).contains("Named Ada"));
    assert_eq!(images(path), [(40, 20)]);
    let info = run("pdfinfo", &[path]);
    assert!(info.contains("297.638 x 419.528 pts"), "A6: {info}");

    let bad = render(&["no-equals-sign"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("KEY=VALUE"));
}
