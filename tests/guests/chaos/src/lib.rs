//! A plugin that misbehaves on request. The template's first word says what
//! to do, an optional `:N` argument says how much:
//!
//! | template        | behaviour                                              |
//! |-----------------|--------------------------------------------------------|
//! | `ok`            | returns the data as the document                       |
//! | `loop`          | spins forever                                          |
//! | `alloc`         | allocates until allocation fails                       |
//! | `alloc:N`       | allocates N MiB (touched), then `ok`                   |
//! | `trap`          | panics (a wasm trap)                                   |
//! | `big:N`         | returns an N-byte document                             |
//! | `stdout:N`      | writes N bytes to stdout and N to stderr, then `ok`    |
//! | `fail-internal` | returns a transient `internal` error                   |
//! | `fail-template` | returns a permanent `bad-template` error               |
//! | `fail-until:N`  | `internal` error while option `attempt` < N, then `ok` |
//! | `spin:N`        | busy-waits N milliseconds, then `ok`                   |
//! | `fonts`         | reports the host's font index and loads one face       |
//! | `probe`         | tries file, env, socket access; reports what worked    |
use export_host_plugin_kit::*;
use std::io::Write;

struct Chaos;

impl Plugin for Chaos {
    fn info() -> PluginInfo {
        PluginInfo::new("chaos", "0.1.0").format(OutputFormat::new(
            "chaos",
            "text/plain",
            "txt",
            &["chaos"],
        ))
    }

    fn render(req: RenderRequest) -> Result<Document, RenderError> {
        let text = req.template_text()?.trim().to_string();
        let (cmd, arg) = match text.split_once(':') {
            Some((c, a)) => (c.to_string(), a.trim().parse::<u64>().unwrap_or(0)),
            None => (text.clone(), 0),
        };
        let ok = |bytes: Vec<u8>| Ok(Document::new(bytes, "text/plain", "txt"));
        match cmd.as_str() {
            "ok" => ok(req.data.clone().into_bytes()),
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "alloc" if arg > 0 => {
                let chunks: Vec<Vec<u8>> = (0..arg)
                    .map(|_| {
                        let mut v = vec![0u8; 1 << 20];
                        v[0] = 1;
                        std::hint::black_box(v)
                    })
                    .collect();
                ok(format!("allocated {} MiB", chunks.len()).into_bytes())
            }
            "alloc" => {
                let mut chunks: Vec<Vec<u8>> = Vec::new();
                loop {
                    let mut v = vec![0u8; 1 << 20];
                    v[0] = 1;
                    chunks.push(std::hint::black_box(v));
                }
            }
            "spin" => {
                let start = std::time::Instant::now();
                while start.elapsed().as_millis() < arg as u128 {
                    std::hint::spin_loop();
                }
                ok(req.data.clone().into_bytes())
            }
            "trap" => panic!("chaos guest asked to trap"),
            "big" => ok(vec![b'x'; arg as usize]),
            "stdout" => {
                let chunk = vec![b'o'; 64 * 1024];
                let mut left = arg as usize;
                while left > 0 {
                    let n = left.min(chunk.len());
                    let _ = std::io::stdout().write_all(&chunk[..n]);
                    let _ = std::io::stderr().write_all(&chunk[..n]);
                    left -= n;
                }
                ok(req.data.clone().into_bytes())
            }
            "fail-internal" => Err(RenderError::internal("chaos: transient failure")),
            "fail-template" => Err(RenderError::bad_template("chaos: bad template")),
            "fail-until" => {
                let attempt: u64 = req
                    .option("attempt")
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0);
                if attempt < arg {
                    Err(RenderError::internal(format!(
                        "chaos: attempt {attempt} < {arg}"
                    )))
                } else {
                    ok(format!("ok after {attempt}").into_bytes())
                }
            }
            "fonts" => {
                use export_host_plugin_kit::bindings::export_host::plugin::fonts;
                let faces = fonts::faces();
                let first = faces.first().map(|f| f.family.clone()).unwrap_or_default();
                let bytes = faces.first().and_then(|f| fonts::data(f.id)).map(|d| d.len()).unwrap_or(0);
                let missing = fonts::data(u32::MAX).is_none();
                ok(format!("faces={} first={first} bytes={bytes} unknown_is_none={missing}", faces.len()).into_bytes())
            }
            "probe" => {
                let file = std::fs::read("/etc/passwd").is_ok() || std::fs::read_dir(".").is_ok();
                let env = std::env::vars().count() > 0;
                let net = std::net::TcpStream::connect("127.0.0.1:80").is_ok();
                ok(format!("file={file} env={env} net={net}").into_bytes())
            }
            other => Err(RenderError::bad_template(format!(
                "unknown chaos command {other:?}"
            ))),
        }
    }
}

export_plugin!(Chaos);
