//! The task's template bundle, read-only (the WIT `bundle` import): the
//! other files uploaded under the template id, e.g. `logo.png` next to
//! `report.typ`. A plugin reads only the files its template uses.

use std::path::PathBuf;

use crate::ids::FileName;

/// What a render gets with its template: the file's bytes and, for a task,
/// the bundle directory its other files are read from.
#[derive(Debug, Clone, Default)]
pub struct TemplateInput {
    pub bytes: Vec<u8>,
    /// The bundle's directory; `None`: the template has no other files
    /// (e.g. `export-host render --template t.typ` without `--bundle`).
    pub bundle: Option<PathBuf>,
}

impl From<Vec<u8>> for TemplateInput {
    fn from(bytes: Vec<u8>) -> TemplateInput {
        TemplateInput {
            bytes,
            bundle: None,
        }
    }
}

/// Read file `name` of `dir`: only a plain, valid file name (no separators,
/// no `..`), never a store's temporary file, at most `limit` bytes.
pub fn read(dir: &std::path::Path, name: &str, limit: usize) -> Option<Vec<u8>> {
    let file = FileName::parse(name).ok()?;
    if file.as_str().contains(".tmp-") {
        return None;
    }
    let path = dir.join(file.as_str());
    let meta = std::fs::symlink_metadata(&path).ok()?;
    if !meta.is_file() || meta.len() > limit as u64 {
        return None;
    }
    std::fs::read(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_inside_the_bundle() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("bundle");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(dir.join("logo.png"), b"png").expect("write");
        std::fs::write(root.path().join("secret.txt"), b"secret").expect("write");
        std::fs::write(dir.join("big.png"), vec![0u8; 100]).expect("write");
        assert_eq!(read(&dir, "logo.png", 10).as_deref(), Some(&b"png"[..]));
        assert_eq!(read(&dir, "../secret.txt", 10), None);
        assert_eq!(read(&dir, "/etc/passwd", 10), None);
        assert_eq!(read(&dir, "missing.png", 10), None);
        assert_eq!(read(&dir, "big.png", 10), None, "over the limit");
        assert_eq!(read(&dir, "big.png", 100).map(|b| b.len()), Some(100));
    }
}
