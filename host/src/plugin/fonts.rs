//! The fonts the host shares with plugins (the WIT `fonts` import).
//!
//! The index (family, style, weight, stretch, coverage of every face under
//! `plugins.font_dirs`) is built once, on a background thread at start, and
//! shared by every task. A plugin reads the index and asks for the bytes of
//! only the files it uses; files are read once and kept in memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use super::bindings::fonts::{FontFace, FontStyle};

struct Entry {
    face: FontFace,
    path: PathBuf,
}

pub struct FontIndex {
    dirs: Vec<PathBuf>,
    entries: OnceLock<Vec<Entry>>,
    fingerprint: OnceLock<String>,
    building: Mutex<Option<std::thread::JoinHandle<Vec<Entry>>>>,
    files: Mutex<HashMap<PathBuf, Arc<Vec<u8>>>>,
}

impl FontIndex {
    /// Start indexing `dirs` in the background.
    pub fn new(dirs: Vec<PathBuf>) -> FontIndex {
        let handle = {
            let dirs = dirs.clone();
            std::thread::Builder::new()
                .name("font-index".into())
                .spawn(move || build(&dirs))
                .ok()
        };
        FontIndex {
            dirs,
            entries: OnceLock::new(),
            fingerprint: OnceLock::new(),
            building: Mutex::new(handle),
            files: Mutex::default(),
        }
    }

    fn entries(&self) -> &[Entry] {
        self.entries.get_or_init(|| {
            let handle = self
                .building
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            handle.and_then(|h| h.join().ok()).unwrap_or_default()
        })
    }

    pub fn faces(&self) -> Vec<FontFace> {
        self.entries().iter().map(|e| e.face.clone()).collect()
    }

    /// A digest of the font files on offer (path, size, modification time)
    /// and of this host's version (which decides how they are indexed): a
    /// plugin's prepared state depends on the fonts on offer. Computed from
    /// the files' metadata alone, so a process that only needs the digest
    /// (the CLI finding a cached snapshot) does not wait for the index.
    pub fn fingerprint(&self) -> &str {
        self.fingerprint.get_or_init(|| {
            use sha2::{Digest, Sha256};
            let mut paths = Vec::new();
            for dir in &self.dirs {
                collect(dir, &mut paths, 0);
            }
            paths.sort();
            let mut h = Sha256::new();
            h.update(concat!("export-host ", env!("CARGO_PKG_VERSION"), "\0"));
            for path in paths {
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                h.update(format!("{}\0{}\0{modified}\0", path.display(), meta.len()));
            }
            hex::encode(&h.finalize()[..16])
        })
    }

    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of the file holding face `id`.
    pub fn data(&self, id: u32) -> Option<Arc<Vec<u8>>> {
        let path = &self.entries().get(id as usize)?.path;
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bytes) = files.get(path) {
            return Some(bytes.clone());
        }
        let bytes = Arc::new(std::fs::read(path).ok()?);
        files.insert(path.clone(), bytes.clone());
        Some(bytes)
    }
}

fn build(dirs: &[PathBuf]) -> Vec<Entry> {
    let started = std::time::Instant::now();
    let mut paths = Vec::new();
    for dir in dirs {
        collect(dir, &mut paths, 0);
    }
    paths.sort();
    let mut entries = Vec::new();
    for path in paths {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let count = ttf_parser::fonts_in_collection(&bytes).unwrap_or(1);
        for index in 0..count {
            if let Ok(face) = ttf_parser::Face::parse(&bytes, index)
                && let Some(info) = describe(&face, entries.len() as u32, index)
            {
                entries.push(Entry {
                    face: info,
                    path: path.clone(),
                });
            }
        }
    }
    tracing::info!(
        faces = entries.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "font index built"
    );
    entries
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && depth < 8 {
            collect(&path, out, depth + 1);
        } else if path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
            matches!(
                e.to_ascii_lowercase().as_str(),
                "ttf" | "otf" | "ttc" | "otc"
            )
        }) {
            out.push(path);
        }
    }
}

fn describe(face: &ttf_parser::Face<'_>, id: u32, index: u32) -> Option<FontFace> {
    let family = name(face, ttf_parser::name_id::TYPOGRAPHIC_FAMILY)
        .or_else(|| name(face, ttf_parser::name_id::FAMILY))?;
    let style = if face.is_italic() {
        FontStyle::Italic
    } else if face.is_oblique() {
        FontStyle::Oblique
    } else {
        FontStyle::Normal
    };
    let stretch = match face.width() {
        ttf_parser::Width::UltraCondensed => 500,
        ttf_parser::Width::ExtraCondensed => 625,
        ttf_parser::Width::Condensed => 750,
        ttf_parser::Width::SemiCondensed => 875,
        ttf_parser::Width::Normal => 1000,
        ttf_parser::Width::SemiExpanded => 1125,
        ttf_parser::Width::Expanded => 1250,
        ttf_parser::Width::ExtraExpanded => 1500,
        ttf_parser::Width::UltraExpanded => 2000,
    };
    let lower = family.to_ascii_lowercase();
    let serif = lower.contains("serif") && !lower.contains("sans");
    Some(FontFace {
        id,
        family,
        style,
        weight: face.weight().to_number(),
        stretch,
        index,
        monospace: face.is_monospaced() || lower.contains("mono"),
        serif,
        coverage: coverage(face),
    })
}

fn name(face: &ttf_parser::Face<'_>, id: u16) -> Option<String> {
    face.names()
        .into_iter()
        .filter(|n| n.name_id == id && n.is_unicode())
        .find(|n| n.language() == ttf_parser::Language::English_UnitedStates)
        .and_then(|n| n.to_string())
        .or_else(|| {
            face.names()
                .into_iter()
                .filter(|n| n.name_id == id)
                .find_map(|n| n.to_string())
        })
}

/// Code points the face maps, as sorted half-open ranges.
fn coverage(face: &ttf_parser::Face<'_>) -> Vec<(u32, u32)> {
    let mut points = Vec::new();
    if let Some(cmap) = face.tables().cmap {
        for sub in cmap.subtables {
            if sub.is_unicode() {
                sub.codepoints(|c| points.push(c));
            }
        }
    }
    points.sort_unstable();
    points.dedup();
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for c in points {
        match ranges.last_mut() {
            Some((_, end)) if *end == c => *end = c + 1,
            _ => ranges.push((c, c + 1)),
        }
    }
    ranges
}
