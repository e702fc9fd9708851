//! Sandbox overhead per task: instantiate + call + drop of the empty `noop`
//! guest, next to a direct native call of the same function, in one run.
//! Run: `scripts/bench.sh` (or `cargo bench --bench sandbox` after
//! `scripts/build-plugins.sh noop`). Prints one JSON line with the figures.
//!
//! Second mode, in-process render times of real plugins (fresh sandbox per
//! task, as the worker does), several builds of a plugin interleaved so that
//! they share the machine's noise:
//! `cargo bench --bench sandbox -- render N FORMAT TEMPLATE DATA PLUGIN.wasm...`
//! prints one JSON line per plugin file (median, min, p75, p90, p99 in ms); render
//! options from `BENCH_OPTIONS=k=v,k=v`.

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

/// `render N FORMAT TEMPLATE DATA PLUGIN.wasm...`
fn render_mode(args: &[String]) {
    let [n, format, template, data, plugins @ ..] = args else {
        panic!("usage: render N FORMAT TEMPLATE DATA PLUGIN.wasm...");
    };
    let n: usize = n.parse().expect("N");
    let template_bytes = std::fs::read(template).expect("template");
    let template_name = Path::new(template)
        .file_name()
        .expect("template name")
        .to_string_lossy()
        .into_owned();
    let data = std::fs::read_to_string(data).expect("data");
    // Render options as `k=v,k=v` (e.g. `compression=0`).
    let options: Vec<(String, String)> = std::env::var("BENCH_OPTIONS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let limits = Limits::from_config(&export_host::config::LimitsConfig::default());
    let font_dirs = if format == "pdf" {
        vec![std::path::PathBuf::from("/usr/share/fonts")]
    } else {
        Vec::new()
    };
    let mut hosts = Vec::new();
    for (i, wasm) in plugins.iter().enumerate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = Path::new(wasm).file_name().expect("plugin file name");
        std::fs::copy(wasm, dir.path().join(file)).expect("copy plugin");
        let host = PluginHost::new(SandboxConfig {
            limits,
            overrides: Default::default(),
            // A persistent BENCH_CACHE saves the compile of large plugins.
            cache_dir: std::env::var_os("BENCH_CACHE")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| dir.path().join(format!("cache{i}"))),
            font_dirs: font_dirs.clone(),
            pooling: true,
        })
        .expect("host");
        host.reload(dir.path()).expect("load");
        hosts.push((dir, host, Vec::with_capacity(n)));
    }
    // Let the font index finish before timing.
    std::thread::sleep(Duration::from_millis(if format == "pdf" {
        1500
    } else {
        100
    }));
    for i in 0..n + 3 {
        for (_, host, times) in hosts.iter_mut() {
            let t = Instant::now();
            let doc = host
                .render(
                    format,
                    &template_name,
                    template_bytes.clone(),
                    data.clone(),
                    options.clone(),
                )
                .expect("render");
            let el = t.elapsed();
            std::hint::black_box(doc);
            if i >= 3 {
                times.push(el);
            }
        }
    }
    for (wasm, (_, _, times)) in plugins.iter().zip(hosts.iter_mut()) {
        times.sort();
        let ms = |q: f64| percentile(times, q) / 1000.0;
        println!(
            "{}",
            serde_json::json!({
                "plugin": wasm, "format": format, "template": template_name, "runs": n,
                "median_ms": ms(0.5), "min_ms": times[0].as_secs_f64() * 1000.0,
                "p75_ms": ms(0.75), "p90_ms": ms(0.9), "p99_ms": ms(0.99),
            })
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("render") {
        return render_mode(&args[1..]);
    }
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
