//! Sandbox overhead per task: instantiate + call + drop of the empty `noop`
//! guest, next to a direct native call of the same function, in one run.
//! Run: `scripts/bench.sh` (or `cargo bench --bench sandbox` after
//! `scripts/build-plugins.sh noop`). Prints one JSON line with the figures.

use export_host::plugin::{Limits, PluginHost, SandboxConfig};
use std::path::Path;
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e6
}

#[inline(never)]
fn native_noop(template: Vec<u8>, data: String) -> (Vec<u8>, String) {
    // The guest's work: take the request, return an empty document.
    drop((template, data));
    (Vec::new(), "application/octet-stream".to_string())
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().expect("tempdir");
    let noop = root.join("target/test-guests/noop.wasm");
    assert!(
        noop.exists(),
        "build it first: scripts/build-plugins.sh noop"
    );
    std::fs::copy(&noop, dir.path().join("noop.wasm")).expect("copy");
    let limits = Limits::from_config(&export_host::config::LimitsConfig::default());
    let mut results = serde_json::Map::new();
    for pooling in [true, false] {
        let host = PluginHost::new(SandboxConfig {
            limits,
            overrides: Default::default(),
            cache_dir: dir.path().join("cache"),
            font_dirs: Vec::new(),
            pooling,
        })
        .expect("host");
        host.reload(dir.path()).expect("load");
        let n = 5000;
        let mut times = Vec::with_capacity(n);
        for i in 0..n + 500 {
            let t = Instant::now();
            let doc = host
                .render("noop", "t.noop", b"x".to_vec(), "{}".into(), Vec::new())
                .expect("render");
            let el = t.elapsed();
            std::hint::black_box(doc);
            if i >= 500 {
                times.push(el);
            }
        }
        times.sort();
        let key = if pooling {
            "sandbox_pooling"
        } else {
            "sandbox_on_demand"
        };
        results.insert(format!("{key}_p50_us"), percentile(&times, 0.5).into());
        results.insert(format!("{key}_p99_us"), percentile(&times, 0.99).into());
    }
    let mut times = Vec::with_capacity(100_000);
    for _ in 0..100_000 {
        let t = Instant::now();
        std::hint::black_box(native_noop(
            std::hint::black_box(b"x".to_vec()),
            std::hint::black_box("{}".to_string()),
        ));
        times.push(t.elapsed());
    }
    times.sort();
    results.insert("native_p50_us".into(), percentile(&times, 0.5).into());
    results.insert("native_p99_us".into(), percentile(&times, 0.99).into());
    println!("{}", serde_json::Value::Object(results));
}
