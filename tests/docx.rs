//! docx plugin tests (issue 5): docxtpl-syntax templates rendered through the
//! real host over HTTP, read back with an independent reader (python-docx +
//! lxml, tests/assets/docx/read_docx.py) and compared with Python docxtpl.
//! The templates are made by tests/assets/docx/fixtures.py (committed), the
//! hostile inputs by the same script at test time.
//! Needs python3 with python-docx and docxtpl: scripts/test-deps.d/docx.sh.

mod common;

use common::TestServer;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const PNG_4X2: &str = "iVBORw0KGgoAAAANSUhEUgAAAAQAAAACCAIAAADwyuo0AAAAEElEQVR4nGP4z8AARwzIHABvqgf5gNwAKAAAAABJRU5ErkJggg==";
const PNG_3X3: &str = "iVBORw0KGgoAAAANSUhEUgAAAAMAAAADCAIAAADZSiLoAAAAEElEQVR4nGP4z8AAQQxYWACPjgj4kWPEuQAAAABJRU5ErkJggg==";

fn assets() -> PathBuf {
    common::repo_root().join("tests/assets/docx")
}

fn python(args: &[&std::ffi::OsStr]) -> Vec<u8> {
    let out = Command::new("python3")
        .args(args)
        .output()
        .expect("python3 (install the test deps: scripts/test-deps.d/docx.sh)");
    assert!(
        out.status.success(),
        "python3 {:?} failed:\n{}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Read a .docx with python-docx; the package must be valid.
fn read_docx(bytes: &[u8]) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out.docx");
    std::fs::write(&path, bytes).expect("write");
    let out = python(&[assets().join("read_docx.py").as_os_str(), path.as_os_str()]);
    let v: Value = serde_json::from_slice(&out).expect("reader json");
    assert_eq!(
        v["problems"],
        json!([]),
        "invalid package: {}",
        v["problems"]
    );
    v
}

/// Render with Python docxtpl (the reference) and read the result.
fn docxtpl(template: &Path, data: &Value) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_path = dir.path().join("data.json");
    let out_path = dir.path().join("out.docx");
    std::fs::write(&data_path, data.to_string()).expect("write");
    python(&[
        assets().join("docxtpl_render.py").as_os_str(),
        template.as_os_str(),
        data_path.as_os_str(),
        out_path.as_os_str(),
    ]);
    read_docx(&std::fs::read(&out_path).expect("docxtpl output"))
}

fn texts(v: &Value) -> Vec<String> {
    v["paragraphs"]
        .as_array()
        .expect("paragraphs")
        .iter()
        .map(|p| p["text"].as_str().expect("text").to_string())
        .collect()
}

fn table_texts(t: &Value) -> Vec<Vec<String>> {
    t["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("cells")
                .iter()
                .map(|c| c["text"].as_str().expect("text").to_string())
                .collect()
        })
        .collect()
}

/// What a reader sees, for comparing two renderings.
fn visible(v: &Value) -> Value {
    json!({
        "paragraphs": texts(v),
        "tables": v["tables"],
        "headers": v["headers"],
        "footers": v["footers"],
        "footnotes": v["footnotes"],
    })
}

async fn upload(s: &TestServer, id: &str, file: &Path) {
    let bytes = std::fs::read(file).expect("template file");
    let name = file.file_name().unwrap().to_str().unwrap();
    let (status, body) = s.put_template(id, name, bytes).await;
    assert_eq!(status, 201, "upload {name}: {body}");
}

/// Render `template_id` with `data`; returns the .docx bytes.
async fn render_ok(s: &TestServer, id: &str, data: Value) -> Vec<u8> {
    let task = s.submit(id, "docx", data).await;
    let t = s.wait_final(&task, Duration::from_secs(60)).await;
    assert_eq!(t["status"], "succeeded", "{id}: {t}");
    let r = s.result(&task).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    );
    r.bytes().await.expect("body").to_vec()
}

/// Render and expect a permanent failure; returns (class, message).
async fn render_err(s: &TestServer, id: &str, data: Value) -> (String, String) {
    let task = s.submit(id, "docx", data).await;
    let t = s.wait_final(&task, Duration::from_secs(60)).await;
    assert_eq!(t["status"], "failed", "{id} should fail: {t}");
    assert_eq!(t["attempts"], 1, "{id}: permanent errors are not retried");
    assert_eq!(t["error"]["retryable"], false, "{t}");
    (
        t["error"]["class"].as_str().unwrap_or_default().to_string(),
        t["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

fn letter_data() -> Value {
    json!({
        "company": {"name": "ACME & Sons <Ltd>", "city": "Zürich",
                    "address": "Main Street 1\n8000 Zürich\nSwitzerland"},
        "ref": "R-42", "date": "2024-03-05", "name": "ada lovelace",
        "items": ["tea", "milk", "bread"], "customer_no": "C-1001",
        "vip": false, "discount": 15, "note": "<b>bold?</b> & \"quoted\" </w:t>",
        "cjk_name": "张三", "lines": ["first line", "second line", "third line"],
        "total": 123.456, "sender": "Grace"
    })
}

fn invoice_data(n: usize) -> Value {
    let items: Vec<Value> = (1..=n)
        .map(|i| json!({"name": format!("Item {i} <x&y>"), "qty": i % 7 + 1, "price": i as f64 * 1.25}))
        .collect();
    let total: f64 = (1..=n)
        .map(|i| ((i % 7 + 1) as f64) * i as f64 * 1.25)
        .sum();
    json!({"number": "INV-7", "customer": "Zoë & Co", "company": "ACME", "items": items,
           "total": total, "paid": true, "due": "2024-04-01"})
}

#[tokio::test(flavor = "multi_thread")]
async fn letter_invoice_and_docxtpl_features() {
    let s = TestServer::start(&["docx"], "").await;
    for t in [
        "letter",
        "invoice",
        "columns",
        "split",
        "nested",
        "footnotes",
    ] {
        upload(&s, t, &assets().join(format!("{t}.docx"))).await;
    }

    // The letter: headers/footers, escaping, newlines, CJK, {%p if %}, loops.
    let letter = read_docx(&render_ok(&s, "letter", letter_data()).await);
    let p = texts(&letter);
    assert_eq!(
        p[0], "ACME & Sons <Ltd>",
        "escaped value reads back verbatim"
    );
    assert_eq!(
        p[1], "Main Street 1\n8000 Zürich\nSwitzerland",
        "newlines become line breaks"
    );
    assert!(letter["breaks"].as_u64().expect("breaks") >= 2, "{letter}");
    assert_eq!(
        p[2], "Date: 05 March 2024",
        "date filter; Word's curly quotes in a tag"
    );
    assert_eq!(p[3], "Dear Ada Lovelace,");
    assert_eq!(
        p[4],
        "Thank you for your order of 3 items: tea, milk, bread."
    );
    assert_eq!(p[5], "Your customer number is C-1001.");
    assert!(
        !p.iter().any(|x| x.contains("VIP")),
        "{{%p if vip %}} removed its paragraph: {p:?}"
    );
    assert!(
        !p.iter().any(|x| x.contains("{%") || x.contains("{{")),
        "{p:?}"
    );
    assert!(p.contains(&"Regular terms apply.".to_string()), "{p:?}");
    assert!(
        p.contains(&"Note: <b>bold?</b> & \"quoted\" </w:t>".to_string()),
        "{p:?}"
    );
    assert!(p.contains(&"客户：张三，谢谢！".to_string()), "CJK: {p:?}");
    for (i, l) in ["first line", "second line", "third line"]
        .iter()
        .enumerate()
    {
        assert!(
            p.contains(&format!("{}. {l}", i + 1)),
            "{{%p for %}}: {p:?}"
        );
    }
    assert!(p.contains(&"Big order: 123.46 EUR".to_string()), "{p:?}");
    assert_eq!(p.last().map(String::as_str), Some("Grace"));
    assert_eq!(letter["headers"], json!(["ACME & Sons <Ltd> — Zürich"]));
    assert_eq!(letter["footers"], json!(["Ref R-42 · ACME & Sons <Ltd>"]));
    // The tag split over three runs keeps the formatting of its first run.
    let runs = letter["paragraphs"][5]["runs"].as_array().expect("runs");
    let value_run = runs
        .iter()
        .find(|r| r["text"] == "C-1001")
        .expect("value run");
    assert_eq!(value_run["bold"], true, "{runs:?}");
    assert_eq!(value_run["italic"], Value::Null, "{runs:?}");
    // The same template and data through docxtpl: same visible result.
    let reference = docxtpl(&assets().join("letter.docx"), &letter_data());
    assert_eq!(visible(&letter), visible(&reference));

    // A 1000-row {%tr for %} table.
    let data = invoice_data(1000);
    let inv = read_docx(&render_ok(&s, "invoice", data.clone()).await);
    let rows = table_texts(&inv["tables"][0]);
    assert_eq!(rows.len(), 1 + 1000 + 1, "header + 1000 items + total");
    assert_eq!(rows[0], ["#", "Item", "Qty", "Price"]);
    assert_eq!(rows[1], ["1", "Item 1 <x&y>", "2", "1.25"]);
    assert_eq!(rows[500], ["500", "Item 500 <x&y>", "4", "625.00"]);
    assert_eq!(rows[1000][1], "Item 1000 <x&y>");
    let total = format!("{:.2}", data["total"].as_f64().unwrap());
    assert_eq!(rows[1001], ["", "Total", "", total.as_str()]);
    assert_eq!(inv["headers"], json!(["INVOICE INV-7"]));
    assert_eq!(inv["footers"], json!(["ACME — invoice INV-7"]));
    let ip = texts(&inv);
    assert_eq!(ip[0], "Invoice INV-7 for Zoë & Co");
    assert!(ip.contains(&"Paid — thank you.".to_string()), "{ip:?}");
    assert!(ip.contains(&"Due 2024-04-01".to_string()), "{ip:?}");
    let reference = docxtpl(&assets().join("invoice.docx"), &invoice_data(30));
    let ours = read_docx(&render_ok(&s, "invoice", invoice_data(30)).await);
    assert_eq!(visible(&ours), visible(&reference));
    // {%p if %} false: the paragraph is gone.
    let mut unpaid = invoice_data(2);
    unpaid["paid"] = json!(false);
    let inv = read_docx(&render_ok(&s, "invoice", unpaid).await);
    assert!(
        !texts(&inv).iter().any(|t| t.contains("Paid")),
        "{:?}",
        texts(&inv)
    );

    // {%tc %} columns, table grid fixed as docxtpl does.
    let data = json!({"product": "Widget",
        "quarters": [{"label": "Q1", "value": 10}, {"label": "Q2", "value": 20},
                     {"label": "Q3", "value": 30}, {"label": "Q4", "value": 40}, {"label": "Q5", "value": 50}]});
    let cols = read_docx(&render_ok(&s, "columns", data.clone()).await);
    let t = &cols["tables"][0];
    assert_eq!(
        table_texts(t),
        [
            vec!["Product", "Q1", "Q2", "Q3", "Q4", "Q5"],
            vec!["Widget", "10", "20", "30", "40", "50"]
        ]
    );
    assert_eq!(t["grid_cols"], 6, "grid has one column per cell");
    assert_eq!(
        visible(&cols),
        visible(&docxtpl(&assets().join("columns.docx"), &data))
    );

    // Split tags, braces split from each other, a split {%p %}, tabs, escapes.
    let data = json!({"first_name": "Ada", "second": "Two", "show": false, "multiline": "a\nb\tc"});
    let split = read_docx(&render_ok(&s, "split", data.clone()).await);
    let sp = texts(&split);
    assert_eq!(
        sp,
        [
            "Hello Ada!",
            "Two",
            "Lines: a\nb\tc",
            "Literal braces: {{ not a tag }}"
        ]
    );
    let runs = split["paragraphs"][0]["runs"].as_array().expect("runs");
    let ada = runs.iter().find(|r| r["text"] == "Ada").expect("value run");
    assert_eq!(
        (ada["bold"].clone(), ada["italic"].clone()),
        (json!(true), Value::Null),
        "{runs:?}"
    );
    assert_eq!(
        visible(&split),
        visible(&docxtpl(&assets().join("split.docx"), &data))
    );
    let shown = read_docx(
        &render_ok(
            &s,
            "split",
            json!({"first_name": "A", "second": "B", "show": true, "multiline": ""}),
        )
        .await,
    );
    assert!(texts(&shown).contains(&"Shown only when show is true".to_string()));

    // Nested tables.
    let data = json!({"title": "T<1>", "names": ["x", "y", "z"]});
    let nested = read_docx(&render_ok(&s, "nested", data.clone()).await);
    let outer = &nested["tables"][0]["rows"][0];
    assert_eq!(outer[0]["text"], "Outer T<1>");
    assert_eq!(
        table_texts(&outer[1]["tables"][0]),
        [vec!["Name"], vec!["X"], vec!["Y"], vec!["Z"]]
    );
    assert!(texts(&nested).contains(&"After the table: 3 names".to_string()));
    assert_eq!(
        visible(&nested),
        visible(&docxtpl(&assets().join("nested.docx"), &data))
    );

    // Footnotes.
    let data = json!({"name": "Bob", "source": "The Book & Co"});
    let fnotes = read_docx(&render_ok(&s, "footnotes", data.clone()).await);
    assert_eq!(fnotes["footnotes"], json!(["Source: The Book & Co"]));
    assert_eq!(texts(&fnotes)[0], "Body with a footnote for Bob");
    assert_eq!(
        visible(&fnotes),
        visible(&docxtpl(&assets().join("footnotes.docx"), &data))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cell_helpers_and_paragraph_merges() {
    let s = TestServer::start(&["docx"], "").await;
    upload(&s, "helpers", &assets().join("helpers.docx")).await;
    let data = json!({
        "rows": [
            {"group": "A", "name": "n1", "color": "FF0000", "v": 1, "span": 1},
            {"group": "A", "name": "n2", "color": "00FF00", "v": 2, "span": 1}
        ],
        "cols": ["x", "y", "z"]
    });
    let doc = read_docx(&render_ok(&s, "helpers", data.clone()).await);
    // {%- / -%} merged three paragraphs into one.
    assert_eq!(
        texts(&doc),
        ["before merged with the previous paragraph and the next"]
    );
    let rows = &doc["tables"][0]["rows"];
    assert_eq!(
        table_texts(&doc["tables"][0]),
        [["A", "n1", "1"], ["", "n2", "2"]]
    );
    // {% vm %}: first row restarts the vertical merge, the next continues it.
    assert_eq!(rows[0][0]["vmerge"], "restart");
    assert_eq!(rows[1][0]["vmerge"], "continue");
    // {% cellbg %} and {% colspan %} from data.
    assert_eq!(rows[0][1]["fill"], "FF0000");
    assert_eq!(rows[1][1]["fill"], "00FF00");
    assert_eq!(rows[0][2]["span"], 1);
    // {% hm %}: one cell spanning the loop's columns.
    let hm = &doc["tables"][1];
    assert_eq!(table_texts(hm), [["merged x"]]);
    assert_eq!(hm["rows"][0][0]["span"], 3);
    assert_eq!(
        visible(&doc),
        visible(&docxtpl(&assets().join("helpers.docx"), &data))
    );
    // A colour cannot break out of its attribute.
    let mut evil = data.clone();
    evil["rows"][0]["color"] = json!("\"/><w:evil a=\"");
    let doc = read_docx(&render_ok(&s, "helpers", evil).await);
    assert_eq!(doc["tables"][0]["rows"][0][1]["fill"], "\"/><w:evil a=\"");
}

#[tokio::test(flavor = "multi_thread")]
async fn images_from_data() {
    let s = TestServer::start(&["docx"], "").await;
    upload(&s, "image", &assets().join("image.docx")).await;
    let logo = json!({"_type": "image", "data": PNG_4X2, "width_mm": 40});
    let small = json!({"_type": "image", "data": PNG_3X3, "width": "2cm", "height": "1cm"});
    let same_bytes = json!({"_type": "image", "data": format!("data:image/png;base64,{PNG_3X3}")});
    let doc = read_docx(
        &render_ok(
            &s,
            "image",
            json!({"logo": logo, "pics": [small, same_bytes]}),
        )
        .await,
    );
    let shapes = doc["inline_shapes"].as_array().expect("shapes");
    assert_eq!(shapes.len(), 4, "{doc}");
    // 40 mm wide, aspect 4:2 kept.
    assert_eq!(shapes[0], json!({"width": 1_440_000, "height": 720_000}));
    assert_eq!(shapes[1], shapes[0]);
    assert_eq!(shapes[2], json!({"width": 720_000, "height": 360_000}));
    // No size: 3 px at 96 dpi.
    assert_eq!(shapes[3], json!({"width": 28_575, "height": 28_575}));
    assert_eq!(
        doc["header_drawings"], 1,
        "image in a header (new rels part)"
    );
    assert_eq!(
        doc["media"].as_array().expect("media").len(),
        2,
        "one media part per distinct picture: {doc}"
    );

    for (data, want) in [
        (
            json!({"_type": "image", "data": "not base64 at all!"}),
            "base64",
        ),
        (
            json!({"_type": "image", "data": "aGVsbG8gd29ybGQ="}),
            "PNG or JPEG",
        ),
        (
            json!({"_type": "image", "data": PNG_4X2, "width": "3 parsecs"}),
            "unit",
        ),
    ] {
        let (class, msg) = render_err(&s, "image", json!({"logo": data, "pics": []})).await;
        assert_eq!(class, "bad_data", "{msg}");
        assert!(msg.contains(want) && msg.contains("word/"), "{msg}");
    }
}

fn bad_fixtures() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    python(&[
        assets().join("fixtures.py").as_os_str(),
        "bad".as_ref(),
        dir.path().as_os_str(),
    ]);
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn template_errors_name_the_part_and_the_tag() {
    let bad = bad_fixtures();
    let s = TestServer::start(&["docx"], "").await;
    let cases = [
        (
            "unknown_filter",
            "{{ name|nosuchfilter }}",
            "unknown filter",
        ),
        ("unclosed_block", "{% if name %}", "unexpected end of input"),
        ("unclosed_tag", "{{ name", "unclosed tag"),
        ("unknown_tag", "{% frobnicate %}", "unknown statement"),
        (
            "cell_error",
            "{% cellbg name|nosuchfilter %}",
            "unknown filter",
        ),
        ("level_mismatch", "{% endif %}", "same level"),
        ("malformed", "word/document.xml", "malformed XML"),
        ("undefined_entity", "word/document.xml", "undefined entity"),
    ];
    for (id, tag, what) in cases {
        upload(&s, id, &bad.path().join(format!("{id}.docx"))).await;
        let (class, msg) = render_err(&s, id, json!({"name": "Ada"})).await;
        assert_eq!(class, "bad_template", "{id}: {msg}");
        assert!(msg.contains("word/document.xml"), "{id}: part named: {msg}");
        assert!(msg.contains(tag), "{id}: tag named: {msg}");
        assert!(msg.contains(what), "{id}: reason: {msg}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malicious_inputs_are_refused_and_the_server_keeps_serving() {
    let bad = bad_fixtures();
    let s = TestServer::start(&["docx"], "").await;
    let cases = [
        ("bomb_ratio", "zip bomb"),
        ("bomb_total", "zip bomb"),
        ("bomb_entries", "limit of 4096"),
        ("traversal", "path traversal"),
        ("absolute", "absolute path"),
        ("not_zip", "not a .docx"),
        ("pdf", "PDF"),
        ("truncated", "end-of-central-directory"),
        ("plain_zip", "[Content_Types].xml"),
        ("billion_laughs", "DOCTYPE"),
        ("xxe", "DOCTYPE"),
        ("doctype_styles", "DOCTYPE"),
        ("fuel", "fuel"),
        ("huge_output", "fuel"),
        ("recursion", "recursion limit"),
    ];
    for (id, what) in cases {
        upload(&s, id, &bad.path().join(format!("{id}.docx"))).await;
        let (class, msg) = render_err(&s, id, json!({"name": "Ada"})).await;
        assert_eq!(class, "bad_template", "{id}: {msg}");
        assert!(msg.contains(what), "{id}: {msg}");
        if id == "doctype_styles" {
            assert!(msg.contains("word/styles.xml"), "{msg}");
        }
    }
    assert!(
        !bad.path().join("../../evil.txt").exists() && !Path::new("/etc/cron.d/evil").exists(),
        "nothing was extracted"
    );

    // Template injection renders nothing dangerous.
    upload(&s, "injection", &bad.path().join("injection.docx")).await;
    let doc = read_docx(&render_ok(&s, "injection", json!({"name": "Ada"})).await);
    assert_eq!(texts(&doc), ["AB", "CD", "EF", "GH", "IJ", "KL", "MN"]);
    upload(&s, "mro", &bad.path().join("injection_mro.docx")).await;
    let task = s.submit("mro", "docx", json!({"name": "Ada"})).await;
    let t = s.wait_final(&task, Duration::from_secs(60)).await;
    if t["status"] == "succeeded" {
        let text = texts(&read_docx(&s.result(&task).await.bytes().await.unwrap())).join("");
        assert!(
            !text.contains("class") && !text.contains("object"),
            "{text}"
        );
    } else {
        let class = t["error"]["class"].as_str().unwrap_or_default();
        assert!(class == "bad_data" || class == "bad_template", "{t}");
    }

    // Still serving: a good render right after all of that.
    upload(&s, "base", &bad.path().join("base.docx")).await;
    let doc = read_docx(&render_ok(&s, "base", json!({"name": "<Ada>"})).await);
    assert_eq!(texts(&doc), ["Hello <Ada>"]);
    let (status, _) = s.get_json("/health").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_render_command() {
    // `export-host render` works on a template file and a data file.
    let dir = tempfile::tempdir().expect("tempdir");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(common::component("docx"), plugins.join("docx.wasm")).unwrap();
    let data = dir.path().join("d.json");
    std::fs::write(&data, invoice_data(1000).to_string()).unwrap();
    let out = dir.path().join("o.docx");
    let status = Command::new(env!("CARGO_BIN_EXE_export-host"))
        .arg("render")
        .arg("--plugins")
        .arg(&plugins)
        .arg("--template")
        .arg(assets().join("invoice.docx"))
        .arg("--data")
        .arg(&data)
        .arg("--format")
        .arg("docx")
        .arg("--out")
        .arg(&out)
        .env("RUST_LOG", "warn")
        .current_dir(dir.path())
        .output()
        .expect("export-host render");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let doc = read_docx(&std::fs::read(&out).unwrap());
    assert_eq!(table_texts(&doc["tables"][0]).len(), 1002);
}
