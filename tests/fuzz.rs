//! HTTP fuzz run: Schemathesis (installed by scripts/test-deps.d/fuzz.sh)
//! generates requests from the server's own GET /openapi.json against the
//! real binary; no request may get a 5xx or crash the server.

mod common;

use common::TestServer;
use std::path::PathBuf;
use std::process::Command;

fn schemathesis() -> PathBuf {
    if let Ok(p) = std::env::var("EXPORT_HOST_SCHEMATHESIS") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let venv = PathBuf::from(home).join(".cache/export-host/fuzz/bin/schemathesis");
    assert!(
        venv.is_file(),
        "schemathesis not found at {}: run scripts/test-deps.d/fuzz.sh (scripts/test.sh does)",
        venv.display()
    );
    venv
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error() {
    let tool = schemathesis();
    let s = TestServer::start(&["text"], "").await;
    s.put_template("letter", "letter.txt", "Dear {{ name }}")
        .await;
    let spec = s.url("/openapi.json");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(tool)
            .args(["run", &spec, "--checks", "not_a_server_error", "-n", "30"])
            .args(["--no-color", "--seed", "1", "--generation-database", "none"])
            // Restarts are exercised by tests/monitoring.rs; fuzzing them
            // would only restart the consumer hundreds of times.
            .args([
                "--exclude-path-regex",
                "^/api/v1/queue/(consumer|producer)/restart$",
            ])
            .output()
            .expect("run schemathesis")
    })
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let cases = text
        .lines()
        .find(|l| l.contains("generated,"))
        .unwrap_or("no case count")
        .trim()
        .to_string();
    println!("schemathesis: {cases}");
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{text}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    assert!(cases.contains("passed"), "{text}");
    // The server survived it.
    let (status, _) = s.get_json("/health").await;
    assert_eq!(status, 200);
}
