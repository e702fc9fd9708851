//! Precompiled component cache: `<cache_dir>/<component sha256>-<engine hash>.cwasm`.
//!
//! The key covers the component's bytes, the wasmtime version and the
//! engine's compilation settings, so a stale or foreign file is never
//! picked; a file that still fails to load is ignored and recompiled.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

fn cache_file(engine: &Engine, dir: &Path, bytes: &[u8]) -> PathBuf {
    let digest = hex::encode(&Sha256::digest(bytes)[..16]);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    "wasmtime-48.0.8".hash(&mut h);
    engine.precompile_compatibility_hash().hash(&mut h);
    dir.join(format!("{digest}-{:016x}.cwasm", h.finish()))
}

/// Compile `bytes`, or load the precompiled artifact from `dir`.
pub fn load(engine: &Engine, dir: &Path, bytes: &[u8]) -> wasmtime::Result<Component> {
    let path = cache_file(engine, dir, bytes);
    if path.exists() {
        match deserialize(engine, &path) {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cached plugin")
            }
        }
    }
    let compiled = engine.precompile_component(bytes)?;
    if let Err(e) =
        std::fs::create_dir_all(dir).and_then(|()| crate::store::write_atomically(&path, &compiled))
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot write plugin cache");
    }
    deserialize(engine, &path).or_else(|_| Component::new(engine, bytes))
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: the file was written by `Engine::precompile_component` of this
    // process or an earlier one, into the host's own cache directory (not
    // the operator's plugin directory), and wasmtime checks its header
    // against the engine's version and settings before use.
    unsafe { Component::deserialize_file(engine, path) }
}
