//! Template bundles on disk: `templates/<tenant>/<template_id>/<file>`.
//! A template id holds one template file per kind a plugin renders from, e.g.
//! `invoice.docx` + `invoice.typ`, and any number of asset files the
//! templates use (images, data: [`ASSET_KINDS`]), e.g. `logo.png`; plugins
//! read assets through the `bundle` import. Caps: [`MAX_BUNDLE_FILES`] files
//! and [`BUNDLE_BYTES_FACTOR`] × the per-file upload limit in all.

use serde::Serialize;
use std::path::PathBuf;

use crate::ids::{FileName, TemplateId, TenantId};
use crate::plugin::TemplateInput;

/// Kinds (extensions) stored as assets of a bundle when no plugin renders
/// from them: several may sit side by side.
pub const ASSET_KINDS: &[&str] = &[
    "png", "jpg", "jpeg", "gif", "svg", "webp", "json", "csv", "yaml", "yml", "toml", "xml", "bib",
    "txt",
];

/// Files one template id may hold.
pub const MAX_BUNDLE_FILES: usize = 64;

/// A bundle's bytes in all may be this many times `limits.max_template_bytes`.
pub const BUNDLE_BYTES_FACTOR: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {0:?} not found")]
    NotFound(String),
    #[error("template bundle full: {0}")]
    Full(String),
    #[error("template storage: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, Serialize)]
pub struct TemplateFile {
    pub name: String,
    pub kind: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TemplateInfo {
    pub template_id: String,
    pub files: Vec<TemplateFile>,
}

#[derive(Clone)]
pub struct TemplateStore {
    root: PathBuf,
}

impl TemplateStore {
    pub fn open(data_dir: &std::path::Path) -> std::io::Result<TemplateStore> {
        let root = data_dir.join("templates");
        std::fs::create_dir_all(&root)?;
        Ok(TemplateStore { root })
    }

    fn dir(&self, tenant: &TenantId, id: &TemplateId) -> PathBuf {
        self.root.join(tenant.as_str()).join(id.as_str())
    }

    /// Store one file of a template. A template file (`one_per_kind`)
    /// replaces another of its kind; an asset sits beside the others. The
    /// bundle stays within [`MAX_BUNDLE_FILES`] and `max_bundle_bytes`.
    pub async fn put(
        &self,
        tenant: &TenantId,
        id: &TemplateId,
        file: &FileName,
        bytes: Vec<u8>,
        one_per_kind: bool,
        max_bundle_bytes: u64,
    ) -> Result<TemplateInfo, TemplateError> {
        let dir = self.dir(tenant, id);
        let kind = file.kind();
        let path = dir.join(file.as_str());
        tokio::task::spawn_blocking(move || -> Result<(), TemplateError> {
            std::fs::create_dir_all(&dir)?;
            let (mut count, mut total) = (1usize, bytes.len() as u64);
            let mut replaced = Vec::new();
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let Ok(other) = FileName::parse(&name) else {
                    continue;
                };
                if name.contains(".tmp-") || entry.path() == path {
                    continue;
                }
                if one_per_kind && other.kind() == kind {
                    // One template file per kind: this one goes.
                    replaced.push(entry.path());
                    continue;
                }
                count += 1;
                total += entry.metadata()?.len();
            }
            if count > MAX_BUNDLE_FILES {
                return Err(TemplateError::Full(format!(
                    "a template holds at most {MAX_BUNDLE_FILES} files"
                )));
            }
            if total > max_bundle_bytes {
                return Err(TemplateError::Full(format!(
                    "the template's files would take {total} bytes; the limit is {max_bundle_bytes}"
                )));
            }
            for old in replaced {
                std::fs::remove_file(old)?;
            }
            Ok(super::write_atomically(&path, &bytes)?)
        })
        .await
        .map_err(std::io::Error::other)??;
        self.get(tenant, id)
            .await?
            .ok_or_else(|| TemplateError::NotFound(id.to_string()))
    }

    pub async fn get(
        &self,
        tenant: &TenantId,
        id: &TemplateId,
    ) -> Result<Option<TemplateInfo>, TemplateError> {
        let dir = self.dir(tenant, id);
        let id = id.to_string();
        tokio::task::spawn_blocking(move || read_info(&dir, id))
            .await
            .map_err(std::io::Error::other)?
    }

    pub async fn list(&self, tenant: &TenantId) -> Result<Vec<TemplateInfo>, TemplateError> {
        let dir = self.root.join(tenant.as_str());
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(e.into()),
            };
            for entry in entries {
                let name = entry?.file_name().to_string_lossy().into_owned();
                if TemplateId::parse(&name).is_ok()
                    && let Some(info) = read_info(&dir.join(&name), name)?
                {
                    out.push(info);
                }
            }
            out.sort_by(|a, b| a.template_id.cmp(&b.template_id));
            Ok(out)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// The template's file for the first of `kinds` it has, with its
    /// bundle (the directory its other files are read from).
    pub async fn find(
        &self,
        tenant: &TenantId,
        id: &TemplateId,
        kinds: &[String],
    ) -> Result<Option<(String, TemplateInput)>, TemplateError> {
        let Some(info) = self.get(tenant, id).await? else {
            return Err(TemplateError::NotFound(id.to_string()));
        };
        let dir = self.dir(tenant, id);
        for kind in kinds {
            if let Some(file) = info.files.iter().find(|f| &f.kind == kind) {
                let bytes = tokio::fs::read(dir.join(&file.name)).await?;
                return Ok(Some((
                    file.name.clone(),
                    TemplateInput {
                        bytes,
                        bundle: Some(dir),
                    },
                )));
            }
        }
        Ok(None)
    }

    pub async fn read_file(
        &self,
        tenant: &TenantId,
        id: &TemplateId,
        file: &FileName,
    ) -> Result<Vec<u8>, TemplateError> {
        match tokio::fs::read(self.dir(tenant, id).join(file.as_str())).await {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(TemplateError::NotFound(format!("{id}/{}", file.as_str())))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Delete a whole template; `false` if it did not exist.
    pub async fn delete(&self, tenant: &TenantId, id: &TemplateId) -> Result<bool, TemplateError> {
        match tokio::fs::remove_dir_all(self.dir(tenant, id)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

fn read_info(
    dir: &std::path::Path,
    template_id: String,
) -> Result<Option<TemplateInfo>, TemplateError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Ok(file) = FileName::parse(&name)
            && !name.contains(".tmp-")
        {
            files.push(TemplateFile {
                kind: file.kind(),
                name,
                size: entry.metadata()?.len(),
            });
        }
    }
    if files.is_empty() {
        return Ok(None);
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Some(TemplateInfo { template_id, files }))
}
