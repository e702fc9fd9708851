//! The command-line client and operator commands, run as the real binary:
//! `submit` (single, batch, --wait, downloads, summary, exit code),
//! `tasks show|watch`, `config check`, and `scripts/new-plugin.sh`.

mod common;

use common::{TestServer, repo_root};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

/// Permanent failures, transient ones exhausted quickly, both plugins.
const FAST_RETRIES: &str = "rocketmq:\n  max_reconsume_times: 1\nqueue:\n  embedded:\n    retry_backoff_ms: 10\n    retry_backoff_max_ms: 10\n";

async fn cli(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_export-host"))
        .args(args)
        .env_remove("EXPORT_HOST_URL")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run export-host")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    )
}

/// Files in `dir` by name → content.
fn files(dir: &Path) -> HashMap<String, String> {
    std::fs::read_dir(dir)
        .expect("out dir")
        .map(|e| {
            let e = e.expect("entry");
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(e.path()).expect("read"))
        })
        .collect()
}

async fn server_with_templates() -> TestServer {
    let s = TestServer::start(&["text", "chaos"], FAST_RETRIES).await;
    for (id, file, body) in [
        ("row", "row.txt", "row {{ n }}"),
        ("bad", "bad.chaos", "fail-template"),
        ("flaky", "flaky.chaos", "fail-internal"),
    ] {
        let (status, body) = s.put_template(id, file, body).await;
        assert_eq!(status, 201, "{body}");
    }
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_of_200_with_failures_summarises_downloads_and_exits_non_zero() {
    let s = server_with_templates().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    // 200 rows: every 10th fails permanently (bad template), rows 5, 45, ...
    // fail transiently until dead, the other 175 render `row {n}`.
    let mut jsonl = String::new();
    for n in 0..200 {
        let line = if n % 10 == 0 {
            json!({ "template_id": "bad", "output_format": "chaos", "data": { "n": n } })
        } else if n % 40 == 5 {
            json!({ "template_id": "flaky", "output_format": "chaos", "data": { "n": n } })
        } else {
            json!({ "n": n })
        };
        jsonl.push_str(&line.to_string());
        jsonl.push('\n');
    }
    let batch = dir.path().join("rows.jsonl");
    std::fs::write(&batch, jsonl).expect("write batch");

    let o = cli(&[
        "submit",
        "--server",
        &s.base,
        "--template",
        "row",
        "--format",
        "txt",
        "--batch",
        batch.to_str().expect("utf-8"),
        "--chunk-size",
        "64",
        "--wait",
        "--poll-interval",
        "0.1",
        "--timeout",
        "120",
        "--out",
        out.to_str().expect("utf-8"),
    ])
    .await;
    let report = show(&o);
    assert_eq!(o.status.code(), Some(1), "{report}");
    let stdout = text(&o.stdout);
    let stderr = text(&o.stderr);

    // The summary table: counts by state, failures grouped by reason.
    assert!(stdout.starts_with("200 tasks in "), "{report}");
    assert!(stdout.contains("\n  succeeded       175\n"), "{report}");
    assert!(stdout.contains("\n  failed           20\n"), "{report}");
    assert!(stdout.contains("\n  dead              5\n"), "{report}");
    // One line per reason: count, state, `class: message` of the task error.
    let reason_line = |prefix: &str, ends: &str| {
        stdout
            .lines()
            .any(|l| l.starts_with(prefix) && l.ends_with(ends))
    };
    assert!(
        reason_line(
            "       20  failed      bad_template: ",
            "chaos: bad template"
        ),
        "{report}"
    );
    assert!(
        reason_line(
            "        5  dead        internal: ",
            "chaos: transient failure"
        ),
        "{report}"
    );
    assert!(stdout.contains("e.g. line 1, task "), "{report}");
    assert!(
        stdout.contains(&format!("downloaded 175 files to {}", out.display())),
        "{report}"
    );
    assert!(
        stderr.contains("Error: 25 of 200 tasks did not succeed"),
        "{report}"
    );
    // stderr is not a terminal: plain progress lines with rate and ETA.
    assert!(stderr.contains("submitting: 200/200 (100%), "), "{report}");
    assert!(stderr.contains("waiting: 200/200 (100%), "), "{report}");
    assert!(
        stderr.contains("/s, done, 175 succeeded, 20 failed, 5 dead"),
        "{report}"
    );

    // The downloaded files: one per succeeded row, named <task id>.txt, with
    // that row's document; plus summary.json.
    let found = files(&out);
    assert_eq!(found.len(), 176, "{:?}", found.keys());
    let summary: Value = serde_json::from_str(&found["summary.json"]).expect("summary.json");
    assert_eq!(summary["total"], 200);
    assert_eq!(summary["counts"]["succeeded"], 175);
    assert_eq!(summary["counts"]["failed"], 20);
    assert_eq!(summary["counts"]["dead"], 5);
    let tasks = summary["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 200);
    for (i, t) in tasks.iter().enumerate() {
        assert_eq!(t["line"], i + 1, "{t}");
        let id = t["task_id"].as_str().expect("every row was queued");
        match t["state"].as_str().expect("state") {
            "succeeded" => {
                let name = format!("{id}.txt");
                assert_eq!(t["file"], name.as_str());
                assert_eq!(found[&name], format!("row {i}"), "row {i}");
            }
            "failed" => {
                assert_eq!(i % 10, 0, "{t}");
                let reason = t["reason"].as_str().expect("reason");
                assert!(
                    reason.starts_with("bad_template: ") && reason.ends_with("chaos: bad template"),
                    "{t}"
                );
                assert!(t["file"].is_null());
            }
            "dead" => {
                assert_eq!(i % 40, 5, "{t}");
                assert_eq!(t["attempts"], 2, "{t}");
            }
            other => panic!("row {i} is {other}: {t}"),
        }
    }

    // `tasks show` on a failed one, pretty and as JSON.
    let failed = tasks[0]["task_id"].as_str().expect("id");
    let o = cli(&["tasks", "show", "--server", &s.base, failed]).await;
    assert!(o.status.success(), "{}", show(&o));
    let shown = text(&o.stdout);
    assert!(shown.contains(&format!("task       {failed}\n")), "{shown}");
    assert!(shown.contains("status     failed\n"), "{shown}");
    assert!(
        shown.contains("error      bad_template: ")
            && shown.contains("chaos: bad template (permanent)\n"),
        "{shown}"
    );
    let o = cli(&["tasks", "show", "--json", "--server", &s.base, failed]).await;
    let raw: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(raw["status"], "failed");
    assert_eq!(raw["error"]["class"], "bad_template");

    // `tasks watch --once`: the counts of the monitoring endpoints.
    let o = cli(&["tasks", "watch", "--once", "--server", &s.base]).await;
    assert!(o.status.success(), "{}", show(&o));
    let watched = text(&o.stdout);
    assert!(watched.contains("backend embedded"), "{watched}");
    assert!(watched.contains("lag 0  in flight 0  dead 5"), "{watched}");
    assert!(watched.contains("produced 200 "), "{watched}");
}

#[tokio::test(flavor = "multi_thread")]
async fn all_succeeded_exits_zero_and_single_tasks_print_their_id() {
    let s = server_with_templates().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("results");
    let rows: String = (0..50).map(|n| format!("{{\"n\":{n}}}\n")).collect();
    let batch = dir.path().join("ok.jsonl");
    std::fs::write(&batch, rows).expect("write");
    let o = cli(&[
        "submit",
        "--server",
        &s.base,
        "--template",
        "row",
        "--format",
        "txt",
        "--priority",
        "7",
        "--batch",
        batch.to_str().expect("utf-8"),
        "--wait",
        "--poll-interval",
        "0.1",
        "--out",
        out.to_str().expect("utf-8"),
    ])
    .await;
    let report = show(&o);
    assert_eq!(o.status.code(), Some(0), "{report}");
    assert!(
        text(&o.stdout).contains("\n  succeeded        50\n"),
        "{report}"
    );
    assert!(
        text(&o.stdout).contains("\n  failed            0\n"),
        "{report}"
    );
    assert!(!text(&o.stdout).contains("by reason"), "{report}");
    let found = files(&out);
    assert_eq!(found.len(), 51);
    let mut contents: Vec<&String> = found
        .iter()
        .filter(|(k, _)| k.ends_with(".txt"))
        .map(|(_, v)| v)
        .collect();
    contents.sort();
    let mut expected: Vec<String> = (0..50).map(|n| format!("row {n}")).collect();
    expected.sort();
    assert_eq!(
        contents,
        expected.iter().collect::<Vec<_>>(),
        "every row rendered once"
    );

    // One task from a --data file, server from the environment, no wait:
    // stdout is the task id.
    let data = dir.path().join("one.json");
    std::fs::write(&data, r#"{"n": "single"}"#).expect("write");
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_export-host"))
        .args(["submit", "--template", "row", "--format", "txt", "--data"])
        .arg(&data)
        .env("EXPORT_HOST_URL", &s.base)
        .output()
        .await
        .expect("run");
    assert!(o.status.success(), "{}", show(&o));
    let id = text(&o.stdout).trim().to_string();
    let task = s.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(
        s.result(&id).await.text().await.expect("body"),
        "row single"
    );
    let o = cli(&["tasks", "show", "--server", &s.base, &id]).await;
    let shown = text(&o.stdout);
    assert!(shown.contains("status     succeeded\n"), "{shown}");
    assert!(shown.contains("attempts   1\n"), "{shown}");
    assert!(
        shown.contains(&format!(
            "result     10 bytes, text/plain; charset=utf-8 (.txt) at /api/v1/tasks/{id}/result"
        )),
        "{shown}"
    );

    // An unknown task: the server's reason, non-zero exit.
    let o = cli(&["tasks", "show", "--server", &s.base, "no-such-task"]).await;
    assert!(!o.status.success(), "{}", show(&o));
    assert!(text(&o.stderr).contains("404"), "{}", show(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_rows_are_reported_and_the_rest_still_runs() {
    let s = server_with_templates().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let batch = dir.path().join("mixed.jsonl");
    std::fs::write(
        &batch,
        "{\"n\":1}\n{\"template_id\":\"nope\",\"data\":{\"n\":2}}\n\n{\"n\":3}\n",
    )
    .expect("write");
    let o = cli(&[
        "submit",
        "--server",
        &s.base,
        "--template",
        "row",
        "--format",
        "txt",
        "--batch",
        batch.to_str().expect("utf-8"),
        "--wait",
        "--poll-interval",
        "0.1",
    ])
    .await;
    let report = show(&o);
    assert_eq!(o.status.code(), Some(1), "{report}");
    let stdout = text(&o.stdout);
    assert!(stdout.contains("\n  succeeded         2\n"), "{report}");
    assert!(stdout.contains("\n  rejected          1\n"), "{report}");
    assert!(
        stdout.contains("rejected    404: template \"nope\" not found"),
        "{report}"
    );
    assert!(stdout.contains("e.g. line 2\n"), "{report}");
    assert!(text(&o.stderr).contains("lines 2)"), "{report}");

    // A line that is not JSON is named before anything is sent.
    std::fs::write(&batch, "{\"n\":1}\n{\"n\":\n").expect("write");
    let o = cli(&[
        "submit",
        "--server",
        &s.base,
        "--template",
        "row",
        "--format",
        "txt",
        "--batch",
        batch.to_str().expect("utf-8"),
    ])
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        text(&o.stderr).contains("line 2: not valid JSON"),
        "{}",
        show(&o)
    );

    // No server there: a clear error, no summary.
    let one = dir.path().join("one.json");
    std::fs::write(&one, "{\"n\":1}").expect("write");
    let o = cli(&[
        "submit",
        "--server",
        "http://127.0.0.1:9",
        "--template",
        "row",
        "--format",
        "txt",
        "--data",
        one.to_str().expect("utf-8"),
    ])
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let stderr = text(&o.stderr);
    assert!(
        stderr.contains("cannot submit: POST http://127.0.0.1:9/api/v1/export"),
        "{}",
        show(&o)
    );
    assert!(!text(&o.stdout).contains("tasks in"), "{}", show(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn config_check_names_the_bad_key_and_redacts_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let check = |yaml: &str, name: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, yaml).expect("write");
        path
    };

    for (yaml, key) in [
        ("rocketmq:\n  name_sever: x\n", "name_sever"),
        ("limits:\n  timeout_ms: 0\n", "limits.timeout_ms"),
        (
            "rocketmq:\n  consumer_thread_min: 9\n  consumer_thread_max: 2\n",
            "rocketmq.consumer_thread_min",
        ),
        ("rocketmq:\n  access_key: ak\n", "rocketmq.secret_key"),
    ] {
        let path = check(yaml, "bad.yaml");
        let o = cli(&["config", "check", path.to_str().expect("utf-8")]).await;
        assert_eq!(o.status.code(), Some(1), "{yaml}: {}", show(&o));
        assert!(text(&o.stderr).contains(key), "{key}: {}", show(&o));
        assert!(o.stdout.is_empty(), "{}", show(&o));
    }

    let path = check(
        "rocketmq:\n  enabled: true\n  access_key: AK-not-shown\n  secret_key: hunter2\n  security_token: tok-not-shown\n  topic: orders\n",
        "good.yaml",
    );
    let o = cli(&["config", "check", path.to_str().expect("utf-8")]).await;
    let report = show(&o);
    assert!(o.status.success(), "{report}");
    let stdout = text(&o.stdout);
    for secret in ["AK-not-shown", "hunter2", "tok-not-shown"] {
        assert!(!stdout.contains(secret), "{secret} leaked: {report}");
    }
    for line in [
        "access_key: <redacted>",
        "secret_key: <redacted>",
        "security_token: <redacted>",
        "topic: orders",
        // Defaults are filled in: the effective settings.
        "max_reconsume_times: 16",
    ] {
        assert!(stdout.contains(line), "{line}: {report}");
    }
    assert!(stdout.contains("queue backend rocketmq"), "{report}");

    // The shipped configs pass.
    let root = repo_root();
    for shipped in ["config/dev.yaml", "config/rocketmq.yaml"]
        .into_iter()
        .map(|p| root.join(p))
        .chain(
            std::fs::read_dir(root.join("deploy"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("export-host"))
                        && p.extension().is_some_and(|e| e == "yaml")
                }),
        )
    {
        let o = cli(&["config", "check", shipped.to_str().expect("utf-8")]).await;
        assert!(o.status.success(), "{}: {}", shipped.display(), show(&o));
    }
}

/// `scripts/new-plugin.sh NAME` on a copy of the plugin workspace: the new
/// crate builds and renders through the real sandbox.
#[tokio::test(flavor = "multi_thread")]
async fn new_plugin_script_makes_a_plugin_that_builds_and_renders() {
    let root = repo_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    let copy = |from: &Path, to: &Path| {
        let status = std::process::Command::new("cp")
            .arg("-r")
            .arg(from)
            .arg(to)
            .status()
            .expect("cp");
        assert!(status.success());
    };
    for d in ["scripts", "plugins"] {
        std::fs::create_dir_all(t.join(d)).expect("mkdir");
    }
    copy(&root.join("wit"), &t.join("wit"));
    copy(&root.join("rust-toolchain.toml"), t);
    copy(&root.join("scripts/new-plugin.sh"), &t.join("scripts"));
    for p in ["kit", "template", "Cargo.lock"] {
        copy(&root.join("plugins").join(p), &t.join("plugins"));
    }
    // The workspace manifest with only the kit and the template as members.
    let manifest = std::fs::read_to_string(root.join("plugins/Cargo.toml")).expect("manifest");
    let manifest: String = manifest
        .lines()
        .map(|l| {
            if l.starts_with("members = [") {
                "members = [\"kit\", \"template\"]".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(t.join("plugins/Cargo.toml"), manifest).expect("manifest");
    let _ = std::fs::remove_dir_all(t.join("plugins/template/target"));

    let name = "cli-test-shout";
    let o = tokio::process::Command::new("bash")
        .arg(t.join("scripts/new-plugin.sh"))
        .arg(name)
        .output()
        .await
        .expect("new-plugin.sh");
    assert!(o.status.success(), "{}", show(&o));
    let members = std::fs::read_to_string(t.join("plugins/Cargo.toml")).expect("manifest");
    assert!(
        members.contains("members = [\"kit\", \"template\", \"cli-test-shout\"]"),
        "{members}"
    );
    // Twice is refused; so is a bad name.
    let again = tokio::process::Command::new("bash")
        .arg(t.join("scripts/new-plugin.sh"))
        .arg(name)
        .output()
        .await
        .expect("again");
    assert!(!again.status.success());
    let bad = tokio::process::Command::new("bash")
        .arg(t.join("scripts/new-plugin.sh"))
        .arg("Bad Name")
        .output()
        .await
        .expect("bad");
    assert_eq!(bad.status.code(), Some(2));

    // Build it the way scripts/build-plugins.sh does (sharing its target dir).
    let target = root.join("target/wasm");
    let o = tokio::process::Command::new("cargo")
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            "export-host-cli-test-shout",
        ])
        .current_dir(t.join("plugins"))
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .await
        .expect("cargo build");
    assert!(o.status.success(), "{}", show(&o));
    let plugins = t.join("dist");
    std::fs::create_dir_all(&plugins).expect("dist");
    std::fs::copy(
        target.join("wasm32-wasip2/release/export_host_cli_test_shout.wasm"),
        plugins.join(format!("{name}.wasm")),
    )
    .expect("copy component");

    let template = t.join("hello.txt");
    std::fs::write(&template, "Hello {{ name }}, {{ n }} items.\n").expect("template");
    let data = t.join("data.json");
    std::fs::write(&data, r#"{"name": "Ada", "n": 3}"#).expect("data");
    let out = t.join("hello.out");
    let config = t.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "plugins:\n  cache_dir: \"{}\"\n",
            common::shared_cache_dir().display()
        ),
    )
    .expect("config");
    let o = cli(&[
        "render",
        "--config",
        config.to_str().expect("utf-8"),
        "--plugins",
        plugins.to_str().expect("utf-8"),
        "--template",
        template.to_str().expect("utf-8"),
        "--data",
        data.to_str().expect("utf-8"),
        "--format",
        name,
        "--out",
        out.to_str().expect("utf-8"),
    ])
    .await;
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(
        std::fs::read_to_string(&out).expect("output"),
        "Hello Ada, 3 items.\n"
    );
}

/// The compose file, the config it mounts and the Prometheus config agree:
/// every export-host container mounts the config and the shared volume at
/// `storage.shared_dir`, roles are one API and two workers, Prometheus
/// scrapes both and loads the alert rules.
#[test]
fn deployment_files_agree() {
    let root = repo_root();
    let read = |p: &str| -> serde_yaml::Value {
        serde_yaml::from_str(&std::fs::read_to_string(root.join(p)).expect(p)).expect(p)
    };
    let compose = read("deploy/docker-compose.yml");
    let config = read("deploy/export-host.yaml");
    let shared_dir = config["storage"]["shared_dir"]
        .as_str()
        .expect("storage.shared_dir");
    let services = &compose["services"];
    let str_list = |v: &serde_yaml::Value| -> Vec<String> {
        v.as_sequence()
            .map(|s| {
                s.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    for (name, role, replicas) in [("api", "api", 1), ("worker", "worker", 2)] {
        let s = &services[name];
        let command = str_list(&s["command"]);
        assert_eq!(
            command,
            [
                "serve",
                "--config",
                "/etc/export-host/export-host.yaml",
                "--role",
                role
            ],
            "{name}"
        );
        let volumes = str_list(&s["volumes"]);
        assert!(
            volumes.contains(&format!("shared:{shared_dir}")),
            "{name}: {volumes:?}"
        );
        assert!(
            volumes
                .contains(&"./export-host.yaml:/etc/export-host/export-host.yaml:ro".to_string()),
            "{name}: {volumes:?}"
        );
        let n = s["deploy"]["replicas"].as_u64().unwrap_or(1);
        assert_eq!(n, replicas, "{name}");
    }
    for broker in ["rocketmq-nameserver", "rocketmq-broker"] {
        assert_eq!(services[broker]["image"], "apache/rocketmq:4.9.4");
    }
    let name_server = config["rocketmq"]["name_server"]
        .as_str()
        .expect("name_server");
    assert_eq!(name_server, "rocketmq-nameserver:9876");

    let prometheus = read("deploy/prometheus.yml");
    assert_eq!(str_list(&prometheus["rule_files"]), ["alerts.yml"]);
    let volumes = str_list(&services["prometheus"]["volumes"]);
    assert!(volumes.contains(&"../config/alerts.yml:/etc/prometheus/alerts.yml:ro".to_string()));
    let scrape = format!("{:?}", prometheus["scrape_configs"]);
    assert!(
        scrape.contains("api:8000") && scrape.contains("worker"),
        "{scrape}"
    );
}

/// `tasks watch` without `--once`: one line per refresh when stdout is not
/// a terminal, until Ctrl-C (SIGINT), then exit 0.
#[tokio::test(flavor = "multi_thread")]
async fn tasks_watch_refreshes_until_ctrl_c() {
    use tokio::io::AsyncBufReadExt;
    let s = server_with_templates().await;
    let ids = s
        .submit_batch("row", "txt", vec![json!({"n": 1}), json!({"n": 2})], None)
        .await;
    for id in &ids {
        s.wait_final(id, Duration::from_secs(30)).await;
    }
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_export-host"))
        .args(["tasks", "watch", "--interval", "0.2", "--server", &s.base])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("watch");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("a refresh within 10 s")
            .expect("read")
            .expect("a line");
        seen.push(line);
    }
    for line in &seen {
        assert!(
            line.contains(" total=2 lag=0 in_flight=0 dead=0 consumed_5m=2 errors_5m=0 "),
            "{seen:?}"
        );
    }
    let pid = child.id().expect("running");
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after Ctrl-C")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
}
