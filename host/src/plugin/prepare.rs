//! Pre-initialised plugins: a plugin that exports `prepare` (wit/plugin.wit)
//! is run once at load, with the host's fonts, and its memory and globals
//! are snapshotted into a new component (Wizer, `wasmtime-wizer`). Every
//! task's fresh sandbox then starts from that state instead of rebuilding
//! it: for the pdf plugin the font book (built and hashed from 50+ faces'
//! coverage) and Typst's lazily initialised tables.
//!
//! Snapshots are cached in the plugin cache directory under the component's
//! digest and the font index's fingerprint (the state depends on both); the
//! snapshot's compiled form is then cached like any component (`cache`).
//! Any failure leaves the plain component serving (the plugin must work
//! without `prepare`), with a warning.

use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::Store;
use wasmtime::component::{Component, Instance, Linker, WasmList};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

use super::limits::TaskState;

/// The export's name without its version (any 0.1.x is accepted).
const PREPARE_INTERFACE: &str = "export-host:plugin/prepare@";

/// Whether the component's bytes mention the `prepare` interface (cheap, no
/// compile: the snapshot path then checks the real exports).
pub fn may_export(bytes: &[u8]) -> bool {
    let needle = PREPARE_INTERFACE.as_bytes();
    bytes.windows(needle.len()).any(|w| w == needle)
}

/// The `prepare` export's interface name, if the component has one.
fn exported(engine: &wasmtime::Engine, component: &Component) -> Option<String> {
    let ty = component.component_type();
    ty.exports(engine)
        .map(|(name, _)| name.to_string())
        .find(|name| {
            name.strip_prefix(PREPARE_INTERFACE)
                .is_some_and(|v| v.starts_with("0.1."))
        })
}

/// A snapshot made earlier for `bytes` with fonts `fingerprint`.
pub fn cached(cache_dir: &Path, bytes: &[u8], fingerprint: &str) -> Option<Vec<u8>> {
    std::fs::read(cache_path(cache_dir, bytes, fingerprint)).ok()
}

/// The snapshot's cache file for `bytes` prepared with fonts `fingerprint`.
fn cache_path(dir: &Path, bytes: &[u8], fingerprint: &str) -> std::path::PathBuf {
    let mut h = Sha256::new();
    h.update(bytes);
    h.update(fingerprint.as_bytes());
    h.update(b"wasmtime-wizer-48.0.8");
    dir.join(format!(
        "{}.prepared.wasm",
        hex::encode(&h.finalize()[..16])
    ))
}

/// The prepared component's bytes: from the cache, or made now by running
/// its `prepare` in `store` and snapshotting. The plain component is never
/// compiled on this path (only the instrumented one, then the snapshot).
pub fn snapshot(
    engine: &wasmtime::Engine,
    linker: &Linker<TaskState>,
    store: Store<TaskState>,
    timeout: std::time::Duration,
    cache_dir: &Path,
    fingerprint: &str,
    bytes: &[u8],
) -> Result<Vec<u8>, String> {
    let path = cache_path(cache_dir, bytes, fingerprint);
    if let Ok(cached) = std::fs::read(&path) {
        return Ok(cached);
    }
    // One process at a time makes a given snapshot (several servers sharing
    // a cache directory, e.g. the test suite): the others wait here, without
    // CPU, and then read it.
    let _ = std::fs::create_dir_all(cache_dir);
    let lock = std::fs::File::create(path.with_extension("lock"))
        .and_then(|f| f.lock().map(|()| f))
        .ok();
    if let Ok(cached) = std::fs::read(&path) {
        return Ok(cached);
    }
    let started = std::time::Instant::now();
    let wizer = Wizer::new();
    let (cx, instrumented) = wizer
        .instrument_component(bytes)
        .map_err(|e| format!("cannot instrument for the snapshot: {e:#}"))?;
    // Compiled once and dropped: only the snapshot is kept (and cached).
    let component = Component::new(engine, &instrumented)
        .map_err(|e| format!("cannot compile the instrumented component: {e:#}"))?;
    let interface = exported(engine, &component).ok_or("no prepare export")?;
    let interface = interface.as_str();
    let mut store = store;
    // Bounded like a render (`deadline`): a `prepare` that sleeps in a host
    // call is stopped too (one that spins traps at the store's epoch
    // deadline).
    let snapshot = super::deadline::within(timeout, async {
        let instance = linker
            .instantiate_async(&mut store, &component)
            .await
            .map_err(|e| format!("cannot instantiate for prepare: {e:#}"))?;
        let func = {
            let (_, iface) = instance
                .get_export(&mut store, None, interface)
                .ok_or("no prepare interface")?;
            let (_, func) = instance
                .get_export(&mut store, Some(&iface), "prepare")
                .ok_or("no prepare function")?;
            instance
                .get_typed_func::<(), ()>(&mut store, func)
                .map_err(|e| format!("prepare has the wrong type: {e:#}"))?
        };
        func.call_async(&mut store, ())
            .await
            .map_err(|e| format!("prepare failed: {e:#}"))?;
        wizer
            .snapshot_component(
                &cx,
                &mut Access {
                    store: &mut store,
                    instance,
                },
            )
            .await
            .map_err(|e| format!("snapshot failed: {e:#}"))
    })
    .map_err(|e| format!("prepare failed: {e}"))??;
    if let Err(e) = std::fs::create_dir_all(cache_dir)
        .and_then(|()| crate::store::write_atomically(&path, &snapshot))
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot cache the prepared plugin");
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        bytes = snapshot.len(),
        "plugin prepared (snapshot taken)"
    );
    drop(lock);
    Ok(snapshot)
}

/// Wizer's view of the instance's state (its accessor exports).
struct Access<'a> {
    store: &'a mut Store<TaskState>,
    instance: Instance,
}

impl Access<'_> {
    async fn call<R: wasmtime::component::Lift + Send + Sync + 'static>(
        &mut self,
        instance: &str,
        func: &str,
    ) -> R {
        let (_, iface) = self
            .instance
            .get_export(&mut *self.store, None, instance)
            .expect("wizer's accessor instance");
        let (_, f) = self
            .instance
            .get_export(&mut *self.store, Some(&iface), func)
            .expect("wizer's accessor function");
        let f = self
            .instance
            .get_typed_func::<(), (R,)>(&mut *self.store, f)
            .expect("wizer's accessor type");
        f.call_async(&mut *self.store, ())
            .await
            .expect("wizer's accessor")
            .0
    }
}

impl ComponentInstanceState for Access<'_> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        let list: WasmList<u8> = self.call(instance, func).await;
        contents(list.as_le_slice(&*self.store));
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func).await
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func).await
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call::<f32>(instance, func).await.to_bits()
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call::<f64>(instance, func).await.to_bits()
    }
}
