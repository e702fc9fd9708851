//! Native render times of the pdf plugin's code (no sandbox), for comparison
//! with the in-sandbox times. The font set (book of every face, hashed) is
//! built once per process, as the plugin's `prepare` does once per load. Each
//! iteration starts from a new World, no loaded font and evicted memoization
//! caches; process-wide lazy statics (standard library tables, ICU data, ...)
//! stay warm after the first run, which is reported separately (what a fresh
//! sandbox would start from without the host's `prepare` snapshot).
//!
//! usage: export-host-pdf-bench FONT_DIR N TEMPLATE.typ DATA.json [TEMPLATE DATA ...]
//! env: UNTAGGED=1 renders without the tagged-PDF structure (option
//! `tagged=false`); COUNT_RANGES=1 prints the coverage ranges per face (what
//! the host's `faces()` carries); LOG_FONTS=1 names every font file loaded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use export_host_pdf::world::{Face, FontSet, FontSource};
use export_host_pdf::{Options, render};
use typst::foundations::Bytes;
use typst::text::Font;

struct DirFonts {
    /// (path, index) by face id.
    faces: Arc<Vec<(PathBuf, u32)>>,
}

impl FontSource for DirFonts {
    fn data(&self, id: u32) -> Option<Vec<u8>> {
        let path = &self.faces.get(id as usize)?.0;
        if std::env::var_os("LOG_FONTS").is_some() {
            eprintln!("font data requested: face {id}, {}", path.display());
        }
        std::fs::read(path).ok()
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else if matches!(
            p.extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("ttf" | "otf" | "ttc" | "otc")
        ) {
            out.push(p);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    assert!(
        args.len() >= 4 && args.len() % 2 == 0,
        "usage: FONT_DIR N TEMPLATE DATA [...]"
    );
    let n: usize = args[1].parse().expect("N");

    // The font index (outside the timing, as the host builds it once).
    let mut paths = Vec::new();
    collect(Path::new(&args[0]), &mut paths);
    paths.sort();
    let mut index = Vec::new();
    let mut infos = Vec::new();
    for path in paths {
        let Ok(data) = std::fs::read(&path) else {
            continue;
        };
        for font in Font::iter(Bytes::new(data)) {
            index.push((path.clone(), font.index()));
            infos.push(font.info().clone());
        }
    }
    let index = Arc::new(index);
    let set: &'static FontSet = Box::leak(Box::new(FontSet::new(
        infos
            .iter()
            .enumerate()
            .map(|(id, info)| Face {
                id: id as u32,
                index: index[id].1,
                info: info.clone(),
            })
            .collect(),
    )));
    if std::env::var_os("COUNT_RANGES").is_some() {
        let mut total = 0;
        for info in &infos {
            let mut ranges = 0;
            let mut prev = u32::MAX - 1;
            for c in info.coverage.iter() {
                if c != prev.wrapping_add(1) {
                    ranges += 1;
                }
                prev = c;
            }
            total += ranges;
            println!("{} {:?}: {ranges} ranges", info.family, info.variant);
        }
        println!("{} faces, {total} ranges", infos.len());
    }

    for pair in args[2..].chunks(2) {
        let template = std::fs::read_to_string(&pair[0]).expect("template");
        let data = std::fs::read_to_string(&pair[1]).expect("data");
        let name = Path::new(&pair[0])
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..n {
            typst::comemo::evict(0);
            let started = Instant::now();
            let pdf = render(
                &name,
                template.clone(),
                data.clone(),
                set,
                Box::new(DirFonts {
                    faces: index.clone(),
                }),
                &Options {
                    tagged: std::env::var_os("UNTAGGED").is_none(),
                    ..Options::default()
                },
            )
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            size = pdf.len();
        }
        let first = times[0];
        times.sort_by(f64::total_cmp);
        println!(
            "native {name}: min {:.1} ms, median {:.1} ms over {n} runs ({size} bytes); first run {first:.1} ms",
            times[0],
            times[times.len() / 2]
        );
    }
}
