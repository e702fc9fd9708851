//! The plugin sandbox: loads format-plugin components, picks one by output
//! format, and runs each render in a fresh store with its own limits.
//!
//! * [`bindings`] — the one `bindgen!` of the WIT world.
//! * [`limits`] — per-task limits and the store data that enforces them.
//! * [`fault`] — what can go wrong, and whether it is worth a retry.
//! * [`cache`] — precompiled `.cwasm` files.
//!
//! Calls are synchronous (run them on a blocking thread); a ticker thread
//! advances the engine's epoch every [`TICK`], and each store's deadline is
//! its timeout in ticks, so a stuck guest traps within timeout + one tick.

pub mod bindings;
pub mod cache;
pub mod fault;
pub mod fonts;
pub mod limits;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};

use bindings::{FormatPlugin, FormatPluginPre, RenderRequest};
pub use fault::{Fault, Retry};
pub use limits::Limits;
use limits::TaskState;

/// Epoch tick: the resolution of the wall-clock timeout.
pub const TICK: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("wasm engine: {0}")]
    Engine(String),
}

/// One output format offered by a loaded plugin.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FormatInfo {
    pub name: String,
    pub media_type: String,
    pub extension: String,
    pub template_kinds: Vec<String>,
    pub plugin: String,
}

/// A loaded plugin, or a file that failed to load.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginStatus {
    pub file: String,
    pub name: Option<String>,
    pub version: Option<String>,
    pub formats: Vec<String>,
    pub status: &'static str,
    pub error: Option<String>,
}

struct Loaded {
    name: String,
    version: String,
    formats: Vec<FormatInfo>,
    pre: FormatPluginPre<TaskState>,
}

#[derive(Default)]
struct Registry {
    by_format: BTreeMap<String, (Arc<Loaded>, FormatInfo)>,
    statuses: Vec<PluginStatus>,
}

/// A rendered document.
#[derive(Debug)]
pub struct Rendered {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub extension: String,
}

pub struct PluginHost {
    engine: Engine,
    linker: Linker<TaskState>,
    limits: Limits,
    cache_dir: PathBuf,
    fonts: Arc<fonts::FontIndex>,
    registry: RwLock<Registry>,
    _ticker: Ticker,
}

struct Ticker(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl PluginHost {
    pub fn new(
        limits: Limits,
        cache_dir: PathBuf,
        font_dirs: Vec<PathBuf>,
    ) -> Result<PluginHost, PluginError> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| PluginError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| PluginError::Engine(e.to_string()))?;

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (weak, flag) = (engine.weak(), stop.clone());
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })
            .map_err(|e| PluginError::Engine(e.to_string()))?;

        Ok(PluginHost {
            engine,
            linker,
            limits,
            cache_dir,
            fonts: Arc::new(fonts::FontIndex::new(font_dirs)),
            registry: RwLock::default(),
            _ticker: Ticker(stop),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Load every `*.wasm` in `dir`, replacing what was loaded before.
    /// Files that fail are listed in [`PluginHost::statuses`] with the reason.
    pub fn load_dir(&self, dir: &Path) -> Result<(), PluginError> {
        let entries = std::fs::read_dir(dir).map_err(|source| PluginError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
            .collect();
        files.sort();
        let mut registry = Registry::default();
        for path in files {
            let file = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            match self.load_file(&path) {
                Ok(loaded) => {
                    let loaded = Arc::new(loaded);
                    let mut claimed = Vec::new();
                    for f in &loaded.formats {
                        if let Some((other, _)) = registry.by_format.get(&f.name) {
                            tracing::warn!(format = %f.name, plugin = %loaded.name, kept = %other.name, "format offered twice; keeping the first");
                            continue;
                        }
                        registry
                            .by_format
                            .insert(f.name.clone(), (loaded.clone(), f.clone()));
                        claimed.push(f.name.clone());
                    }
                    tracing::info!(%file, plugin = %loaded.name, formats = ?claimed, "plugin loaded");
                    registry.statuses.push(PluginStatus {
                        file,
                        name: Some(loaded.name.clone()),
                        version: Some(loaded.version.clone()),
                        formats: claimed,
                        status: "loaded",
                        error: None,
                    });
                }
                Err(e) => {
                    tracing::error!(%file, error = %e, "plugin rejected");
                    registry.statuses.push(PluginStatus {
                        file,
                        name: None,
                        version: None,
                        formats: Vec::new(),
                        status: "rejected",
                        error: Some(e),
                    });
                }
            }
        }
        *self.registry.write().unwrap_or_else(|p| p.into_inner()) = registry;
        Ok(())
    }

    fn load_file(&self, path: &Path) -> Result<Loaded, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
        let component = cache::load(&self.engine, &self.cache_dir, &bytes)
            .map_err(|e| format!("not a valid component: {e:#}"))?;
        self.check_world(&component)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| format!("imports something the host does not provide: {e:#}"))?;
        let pre = FormatPluginPre::new(pre)
            .map_err(|e| format!("does not export {}: {e:#}", bindings::RENDERER_EXPORT))?;
        let mut store = self.store();
        let plugin = pre
            .instantiate(&mut store)
            .map_err(|e| format!("cannot instantiate: {e:#}"))?;
        let info = plugin
            .export_host_plugin_renderer()
            .call_info(&mut store)
            .map_err(|e| format!("info() failed: {e:#}"))?;
        if crate::ids::validate("plugin name", &info.name).is_err() {
            return Err(format!("plugin name {:?} is not a valid id", info.name));
        }
        let mut formats = Vec::new();
        for f in info.formats {
            if crate::ids::validate("format", &f.name).is_err()
                || !f.extension.bytes().all(|b| b.is_ascii_alphanumeric())
                || f.extension.is_empty()
                || f.media_type.is_empty()
            {
                return Err(format!(
                    "format {:?} has an invalid name, extension or media type",
                    f.name
                ));
            }
            formats.push(FormatInfo {
                name: f.name,
                media_type: f.media_type,
                extension: f.extension,
                template_kinds: f
                    .template_kinds
                    .into_iter()
                    .map(|k| k.to_ascii_lowercase())
                    .collect(),
                plugin: info.name.clone(),
            });
        }
        if formats.is_empty() {
            return Err("plugin offers no output format".into());
        }
        Ok(Loaded {
            name: info.name,
            version: info.version,
            formats,
            pre,
        })
    }

    /// Refuse components built against another version of the contract,
    /// naming both versions.
    fn check_world(&self, component: &Component) -> Result<(), String> {
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        if exports.iter().any(|e| e == bindings::RENDERER_EXPORT) {
            return Ok(());
        }
        let prefix = format!("{}/renderer@", bindings::WIT_PACKAGE);
        match exports.iter().find(|e| e.starts_with(&prefix)) {
            Some(other) => Err(format!(
                "exports {other}, but this host implements {} (accepts {}@{})",
                bindings::RENDERER_EXPORT,
                bindings::WIT_PACKAGE,
                bindings::WIT_VERSION
            )),
            None => Err(format!(
                "wrong world: does not export {} (exports: {})",
                bindings::RENDERER_EXPORT,
                if exports.is_empty() {
                    "nothing".to_string()
                } else {
                    exports.join(", ")
                }
            )),
        }
    }

    fn store(&self) -> Store<TaskState> {
        let mut store = Store::new(
            &self.engine,
            TaskState::new(&self.limits, self.fonts.clone()),
        );
        store.limiter(|s| &mut s.limiter);
        let ticks = self.limits.timeout.as_nanos().div_ceil(TICK.as_nanos()) as u64;
        store.set_epoch_deadline(ticks.max(1));
        store.epoch_deadline_trap();
        store
    }

    /// Every format on offer, sorted by name.
    pub fn formats(&self) -> Vec<FormatInfo> {
        let reg = self.registry.read().unwrap_or_else(|p| p.into_inner());
        reg.by_format.values().map(|(_, f)| f.clone()).collect()
    }

    pub fn format(&self, name: &str) -> Option<FormatInfo> {
        let reg = self.registry.read().unwrap_or_else(|p| p.into_inner());
        reg.by_format.get(name).map(|(_, f)| f.clone())
    }

    pub fn statuses(&self) -> Vec<PluginStatus> {
        self.registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .statuses
            .clone()
    }

    /// Render in a fresh sandbox. Blocking: call from a blocking thread.
    pub fn render(
        &self,
        format: &str,
        template_name: &str,
        template: Vec<u8>,
        data: String,
        options: Vec<(String, String)>,
    ) -> Result<Rendered, Fault> {
        let plugin = {
            let reg = self.registry.read().unwrap_or_else(|p| p.into_inner());
            reg.by_format.get(format).map(|(p, _)| p.clone())
        };
        let plugin = plugin.ok_or_else(|| Fault::NoPlugin(format.to_string()))?;
        let mut store = self.store();
        let request = RenderRequest {
            format: format.into(),
            template_name: template_name.into(),
            template,
            data,
            options,
        };
        let outcome = plugin
            .pre
            .instantiate(&mut store)
            .and_then(|instance: FormatPlugin| {
                instance
                    .export_host_plugin_renderer()
                    .call_render(&mut store, &request)
            });
        let limits = &self.limits;
        match outcome {
            Ok(Ok(doc)) if doc.bytes.len() > limits.output_bytes => Err(Fault::OutputTooLarge {
                size: doc.bytes.len(),
                limit: limits.output_bytes,
            }),
            Ok(Ok(doc)) => Ok(Rendered {
                bytes: doc.bytes,
                media_type: doc.media_type,
                extension: doc.extension,
            }),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(classify_trap(&e, store.data(), limits)),
        }
    }
}

fn classify_trap(e: &wasmtime::Error, state: &TaskState, limits: &Limits) -> Fault {
    if let Some(wasmtime::Trap::Interrupt) = e.downcast_ref::<wasmtime::Trap>() {
        return Fault::Timeout {
            limit_ms: limits.timeout.as_millis() as u64,
        };
    }
    if state.limiter.memory_exceeded || state.limiter.table_exceeded {
        return Fault::OutOfMemory {
            limit_mb: (limits.memory_bytes >> 20) as u64,
        };
    }
    Fault::Trap(
        format!("{e:#}")
            .lines()
            .next()
            .unwrap_or("trap")
            .to_string(),
    )
}
