//! The plugin sandbox under attack: misbehaving guests are contained,
//! classified and reported while other tasks keep succeeding; plugins are
//! dropped in, replaced and removed without a restart.

mod common;

use common::{TestServer, component};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn upload(s: &TestServer, id: &str, behaviour: &str) {
    let (status, body) = s
        .put_template(id, &format!("{id}.chaos"), behaviour.to_string())
        .await;
    assert_eq!(status, 201, "{body}");
}

fn millis_between(task: &Value, from: &str, to: &str) -> i64 {
    let t = |k: &str| {
        chrono::DateTime::parse_from_rfc3339(task[k].as_str().expect("timestamp")).expect("rfc3339")
    };
    (t(to) - t(from)).num_milliseconds()
}

#[tokio::test(flavor = "multi_thread")]
async fn misbehaving_guests_are_contained_and_classified() {
    let s = TestServer::start(
        &["text", "chaos"],
        "limits:\n  timeout_ms: 1000\n  memory_mb: 64\n  output_mb: 1\n  stdio_kb: 4\nworker:\n  concurrency: 4\n",
    )
    .await;
    for (id, behaviour) in [
        ("spin", "loop"),
        ("hog", "alloc"),
        ("crash", "trap"),
        ("large", "big:2000000"),
        ("huge", "big:1000000000"),
        ("chatty", "stdout:5000000"),
        ("probe", "probe"),
    ] {
        upload(&s, id, behaviour).await;
    }
    s.put_template("letter", "letter.txt", "hello {{ name }}")
        .await;

    let mut faulty = Vec::new();
    for id in ["spin", "hog", "crash", "large", "huge", "chatty", "probe"] {
        faulty.push((id, s.submit(id, "chaos", json!({ "k": 1 })).await));
    }
    // While those run, ordinary tasks go through.
    let fine: Vec<String> = {
        let mut v = Vec::new();
        for n in 0..5 {
            v.push(s.submit("letter", "txt", json!({ "name": n })).await);
        }
        v
    };
    for id in &fine {
        let t = s.wait_final(id, Duration::from_secs(20)).await;
        assert_eq!(t["status"], "succeeded", "{t}");
    }

    let mut outcome = std::collections::HashMap::new();
    for (name, id) in &faulty {
        outcome.insert(*name, s.wait_final(id, Duration::from_secs(30)).await);
    }
    let class = |name: &str| {
        outcome[name]["error"]["class"]
            .as_str()
            .unwrap_or("-")
            .to_string()
    };
    assert_eq!(class("spin"), "timeout", "{}", outcome["spin"]);
    assert_eq!(class("hog"), "out_of_memory", "{}", outcome["hog"]);
    assert_eq!(class("crash"), "trap", "{}", outcome["crash"]);
    assert_eq!(class("large"), "output_too_large", "{}", outcome["large"]);
    assert_eq!(
        class("huge"),
        "out_of_memory",
        "a 1 GB document cannot even be built: {}",
        outcome["huge"]
    );
    for name in ["spin", "hog", "crash", "large", "huge"] {
        let t = &outcome[name];
        assert_eq!(t["status"], "failed", "{t}");
        assert_eq!(t["attempts"], 1, "limits and traps are permanent: {t}");
        assert!(
            !t["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{t}"
        );
    }
    // Stopped by the timeout, not later than the next stage of the task;
    // the precise bound is `a_stuck_task_is_killed_within_timeout_plus_100ms`.
    let spun = render_ms(&s, &faulty[0].1);
    assert!((1000.0..2000.0).contains(&spun), "stopped after {spun} ms");
    assert!(millis_between(&outcome["spin"], "started_at", "finished_at") >= 1000);
    assert!(
        outcome["large"]["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("1048576")
    );

    // Flooding stdout is not a failure; the log keeps a bounded part.
    assert_eq!(
        outcome["chatty"]["status"], "succeeded",
        "{}",
        outcome["chatty"]
    );
    let log = s.log();
    assert!(
        log.contains("guest output") && log.contains("dropped_bytes=4995904"),
        "{log}"
    );

    // No ambient authority: no files, no environment, no sockets.
    assert_eq!(outcome["probe"]["status"], "succeeded");
    let probe = s.result(&faulty[6].1).await.text().await.expect("text");
    assert_eq!(probe, "file=false env=false net=false");

    let (status, _) = s.get_json("/health").await;
    assert_eq!(status, 200);
}

/// The worker's own measure of a render (instantiate + call until the trap)
/// from its log line; the task's timestamps also include queueing and the
/// database commit.
fn render_ms(s: &TestServer, task_id: &str) -> f64 {
    let log = s.log();
    let line = log
        .lines()
        .find(|l| l.contains(task_id) && l.contains("task failed"))
        .unwrap_or_else(|| panic!("no failure line for {task_id} in:\n{log}"));
    line.split("elapsed_ms=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no elapsed_ms in {line}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_task_is_killed_within_timeout_plus_100ms() {
    let s = TestServer::start(
        &["chaos"],
        "limits:\n  timeout_ms: 500\nworker:\n  concurrency: 1\n",
    )
    .await;
    upload(&s, "spin", "loop").await;
    for _ in 0..3 {
        let id = s.submit("spin", "chaos", json!({})).await;
        let t = s.wait_final(&id, Duration::from_secs(20)).await;
        assert_eq!(t["error"]["class"], "timeout", "{t}");
        let spun = render_ms(&s, &id);
        assert!((500.0..600.0).contains(&spun), "stopped after {spun} ms");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fuel_limit_per_plugin() {
    let s = TestServer::start(
        &["chaos"],
        "plugins:\n  limits:\n    chaos:\n      fuel: 5000000\n",
    )
    .await;
    upload(&s, "spin", "loop").await;
    upload(&s, "fine", "ok").await;
    let spin = s.submit("spin", "chaos", json!({})).await;
    let fine = s.submit("fine", "chaos", json!({})).await;
    let t = s.wait_final(&spin, Duration::from_secs(20)).await;
    assert_eq!(t["error"]["class"], "fuel_exhausted", "{t}");
    assert!(
        millis_between(&t, "started_at", "finished_at") < 5000,
        "fuel stops it long before the 30 s timeout"
    );
    assert_eq!(
        s.wait_final(&fine, Duration::from_secs(20)).await["status"],
        "succeeded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_world_and_wrong_version_are_refused_by_name() {
    let s = TestServer::start(&["text", "wrong-world", "wrong-version"], "").await;
    let (_, body) = s.get_json("/api/v1/plugins").await;
    let plugins = body["data"]["plugins"].as_array().expect("plugins").clone();
    let by_file = |f: &str| {
        plugins
            .iter()
            .find(|p| p["file"] == f)
            .cloned()
            .unwrap_or_else(|| panic!("{f} missing: {body}"))
    };
    let v = by_file("wrong-version.wasm");
    assert_eq!(v["status"], "rejected");
    let msg = v["error"].as_str().expect("error");
    assert!(msg.contains("@0.2.0") && msg.contains("@0.1.0"), "{msg}");
    let w = by_file("wrong-world.wasm");
    assert_eq!(w["status"], "rejected");
    assert!(
        w["error"].as_str().expect("error").contains("wrong world"),
        "{w}"
    );
    assert_eq!(by_file("text.wasm")["status"], "loaded");
    let (_, formats) = s.get_json("/api/v1/formats").await;
    let names: Vec<&str> = formats["data"]["formats"]
        .as_array()
        .expect("formats")
        .iter()
        .map(|f| f["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["html", "md", "txt"]);
}

async fn format_names(s: &TestServer) -> Vec<String> {
    let (_, formats) = s.get_json("/api/v1/formats").await;
    formats["data"]["formats"]
        .as_array()
        .expect("formats")
        .iter()
        .map(|f| f["name"].as_str().expect("name").to_string())
        .collect()
}

async fn wait_for(s: &TestServer, what: &str, cond: impl Fn(&[String]) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let names = format_names(s).await;
        if cond(&names) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: formats are {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plugins_are_dropped_in_replaced_and_removed_without_restart() {
    let s = TestServer::start(&["text"], "").await;
    let dir = s.dir.path().join("plugins");
    let (status, _) = s.put_template("n", "n.noop", "x").await;
    assert_eq!(status, 400, "no plugin renders .noop files yet");

    // Drop in: available over HTTP within 2 s.
    let tmp = dir.join("noop.wasm.part");
    std::fs::copy(component("noop"), &tmp).expect("copy");
    std::fs::rename(&tmp, dir.join("noop.wasm")).expect("rename");
    let took = wait_for(&s, "noop never appeared", |n| n.iter().any(|f| f == "noop")).await;
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let (status, _) = s.put_template("n", "n.noop", "x").await;
    assert_eq!(status, 201);
    let id = s.submit("n", "noop", json!({})).await;
    assert_eq!(
        s.wait_final(&id, Duration::from_secs(10)).await["status"],
        "succeeded"
    );

    // Replace with a broken file: the old version keeps serving.
    std::fs::write(dir.join("noop.wasm"), b"\0asm garbage").expect("write");
    let started = Instant::now();
    loop {
        let (_, body) = s.get_json("/api/v1/plugins").await;
        let entry = body["data"]["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .find(|p| p["file"] == "noop.wasm")
            .cloned();
        if entry.as_ref().is_some_and(|e| e["status"] == "stale") {
            assert!(
                entry.expect("entry")["error"]
                    .as_str()
                    .expect("error")
                    .contains("not a valid component")
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "broken replacement not noticed: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = s.submit("n", "noop", json!({})).await;
    assert_eq!(
        s.wait_final(&id, Duration::from_secs(10)).await["status"],
        "succeeded"
    );

    // Remove: the format is gone and submitting names what is available.
    std::fs::remove_file(dir.join("noop.wasm")).expect("remove");
    wait_for(&s, "noop never went away", |n| {
        !n.iter().any(|f| f == "noop")
    })
    .await;
    let (status, body) = s
        .post_json(
            "/api/v1/export",
            &json!({ "template_id": "n", "output_format": "noop", "data": {} }),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .expect("msg")
            .contains("available: html, md, txt"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fonts_are_shared_read_only_through_the_host_interface() {
    let font = std::path::Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf");
    assert!(
        font.exists(),
        "this test needs Debian's fonts-dejavu-core (apt-get install fonts-dejavu-core)"
    );
    let fonts = tempfile::tempdir().expect("tempdir");
    std::fs::copy(font, fonts.path().join("DejaVuSans.ttf")).expect("copy font");
    let s = TestServer::start(
        &["chaos"],
        &format!("plugins:\n  font_dirs: [\"{}\"]\n", fonts.path().display()),
    )
    .await;
    upload(&s, "fonts", "fonts").await;
    let id = s.submit("fonts", "chaos", json!({})).await;
    assert_eq!(
        s.wait_final(&id, Duration::from_secs(20)).await["status"],
        "succeeded"
    );
    let text = s.result(&id).await.text().await.expect("text");
    let size = std::fs::metadata(font).expect("font").len();
    assert_eq!(
        text,
        format!("faces=1 first=DejaVu Sans bytes={size} unknown_is_none=true")
    );
}

/// A tenant's `limits.timeout_ms` / `memory_mb` tighten the plugin's limits
/// for its own tasks only, and can never loosen them.
#[tokio::test(flavor = "multi_thread")]
async fn tenant_limits_tighten_the_sandbox_for_that_tenant_only() {
    use export_host::auth::hash_key;
    let config = format!(
        "limits:\n  timeout_ms: 1500\n  memory_mb: 128\nworker:\n  concurrency: 2\nauth:\n  mode: keys\n  tenants:\n    - id: tight\n      keys: [\"{}\"]\n      limits: {{ timeout_ms: 300, memory_mb: 40 }}\n    - id: roomy\n      keys: [\"{}\"]\n    - id: greedy\n      keys: [\"{}\"]\n      limits: {{ timeout_ms: 60000, memory_mb: 4096 }}\n",
        hash_key("tight-key"),
        hash_key("roomy-key"),
        hash_key("greedy-key"),
    );
    let s = TestServer::start(&["chaos"], &config).await;
    let mut ids = Vec::new();
    for tenant in ["tight", "roomy", "greedy"] {
        s.set_api_key(Some(&format!("{tenant}-key")));
        upload(&s, "slow", "spin:800").await;
        upload(&s, "wide", "alloc:64").await;
        upload(&s, "slower", "spin:2500").await;
        for t in ["slow", "wide", "slower"] {
            ids.push((tenant, t, s.submit(t, "chaos", json!({})).await));
        }
    }
    let mut outcome = std::collections::HashMap::new();
    for (tenant, t, id) in &ids {
        s.set_api_key(Some(&format!("{tenant}-key")));
        let task = s.wait_final(id, Duration::from_secs(60)).await;
        outcome.insert((*tenant, *t), task);
    }
    let check = |tenant: &str, t: &str, class: Option<&str>, limit: &str| {
        let task = &outcome[&(tenant, t)];
        match class {
            None => assert_eq!(task["status"], "succeeded", "{tenant}/{t}: {task}"),
            Some(class) => {
                assert_eq!(task["status"], "failed", "{tenant}/{t}: {task}");
                assert_eq!(task["error"]["class"], class, "{tenant}/{t}: {task}");
                let msg = task["error"]["message"].as_str().unwrap_or_default();
                assert!(
                    msg.contains(limit),
                    "{tenant}/{t}: {msg} should name {limit}"
                );
            }
        }
    };
    // The tight tenant: 300 ms and 40 MB.
    check("tight", "slow", Some("timeout"), "300 ms");
    check("tight", "wide", Some("out_of_memory"), "40 MB");
    check("tight", "slower", Some("timeout"), "300 ms");
    // Another tenant on the same plugin: the global limits.
    check("roomy", "slow", None, "");
    check("roomy", "wide", None, "");
    check("roomy", "slower", Some("timeout"), "1500 ms");
    // A tenant limit above the global one does not loosen it.
    check("greedy", "slow", None, "");
    check("greedy", "wide", None, "");
    check("greedy", "slower", Some("timeout"), "1500 ms");
}

async fn upload_hostile(s: &TestServer, id: &str, behaviour: &str) {
    let (status, body) = s
        .put_template(id, &format!("{id}.hostile"), behaviour.to_string())
        .await;
    assert_eq!(status, 201, "{body}");
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// The host names where a result goes and how it is served, from the format
/// the plugin declared (and the host validated) at load: a document that
/// claims another extension (a path, here) or media type (a header
/// injection) is the plugin's fault, and nothing is written.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_cannot_choose_where_its_result_is_written_or_how_it_is_served() {
    let s = TestServer::start(&["hostile"], "").await;
    // Over the 16 KiB kept inline: a file under results/ would be written.
    upload_hostile(&s, "escape", "escape:40000").await;
    upload_hostile(&s, "crlf", "crlf").await;
    upload_hostile(&s, "fine", "ok").await;
    let escape = s.submit("escape", "hostile", json!({})).await;
    let crlf = s.submit("crlf", "hostile", json!({})).await;
    let fine = s.submit("fine", "hostile", json!({ "x": 1 })).await;

    let t = s.wait_final(&escape, Duration::from_secs(20)).await;
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["error"]["class"], "bad_output", "{t}");
    assert_eq!(t["attempts"], 1, "permanent: {t}");
    let msg = t["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("extension")
            && msg.contains("txt/../../../escaped")
            && msg.contains("\"txt\""),
        "the reason names the extension returned and the one declared: {msg}"
    );

    let t = s.wait_final(&crlf, Duration::from_secs(20)).await;
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["error"]["class"], "bad_output", "{t}");
    let msg = t["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("media type") && msg.contains("text/plain"),
        "{msg}"
    );

    let t = s.wait_final(&fine, Duration::from_secs(20)).await;
    assert_eq!(t["status"], "succeeded", "{t}");
    let r = s.result(&fine).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().expect("ascii"),
        "text/plain"
    );

    // Nothing escaped the results directory; the only result file is none
    // (the one success is small enough to be kept inline).
    let all = files_under(s.dir.path());
    assert!(
        !all.iter().any(|p| p.to_string_lossy().contains("escaped")),
        "{all:?}"
    );
    let results = s.dir.path().join("data/results");
    let stray: Vec<_> = files_under(&results)
        .into_iter()
        .filter(|p| !p.extension().is_some_and(|e| e == "tmp"))
        .collect();
    assert!(stray.is_empty(), "no result file was written: {stray:?}");
}

/// A guest blocked in a host call (a sleep of an hour on a monotonic-clock
/// pollable) is stopped at its timeout like a guest spinning in wasm code,
/// and its render slot serves the next task at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_sleeping_guest_is_stopped_at_its_timeout_and_frees_its_slot() {
    let s = TestServer::start(
        &["hostile"],
        "limits:\n  timeout_ms: 500\nworker:\n  concurrency: 1\n",
    )
    .await;
    upload_hostile(&s, "nap", "sleep:3600").await;
    upload_hostile(&s, "fine", "ok").await;
    for _ in 0..2 {
        let id = s.submit("nap", "hostile", json!({})).await;
        let t = s.wait_final(&id, Duration::from_secs(20)).await;
        assert_eq!(t["status"], "failed", "{t}");
        assert_eq!(t["error"]["class"], "timeout", "{t}");
        assert!(
            t["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("500 ms"),
            "{t}"
        );
        let slept = render_ms(&s, &id);
        assert!((500.0..600.0).contains(&slept), "stopped after {slept} ms");

        // The only render slot is free again: an ordinary task renders promptly.
        let submitted = Instant::now();
        let ok = s.submit("fine", "hostile", json!({ "n": 1 })).await;
        let t = s.wait_final(&ok, Duration::from_secs(20)).await;
        assert_eq!(t["status"], "succeeded", "{t}");
        assert!(
            submitted.elapsed() < Duration::from_secs(1),
            "the next task waited {:?}",
            submitted.elapsed()
        );
    }
}
