//! The plugin sandbox: loads format-plugin components, picks one by output
//! format, and runs each render in a fresh store with its own limits.
//!
//! * [`bindings`] — the one `bindgen!` of the WIT world.
//! * [`deadline`] — every guest call ends at its task's deadline.
//! * [`limits`] — per-task limits and the store data that enforces them.
//! * [`fault`] — what can go wrong, and whether it is worth a retry.
//! * [`format`] — what a declared format may say and a document must match.
//! * [`cache`] — precompiled `.cwasm` files.
//! * [`fonts`] — the fonts the host shares (the `fonts` import).
//! * [`bundle`] — the task's template bundle (the `bundle` import).
//! * [`prepare`] — plugins pre-initialised once per load (Wizer snapshots).
//! * [`stdio`] — bounded capture of guest stdout/stderr.
//!
//! Calls are blocking for the caller (run them on a blocking thread): each
//! is an async wasmtime call driven on the calling thread and bounded by
//! the task's timeout ([`deadline`]). A ticker thread advances the engine's
//! epoch every [`TICK`], and each store's deadline is its timeout in ticks,
//! so a guest spinning in its own code traps within timeout + one tick; a
//! guest blocked in a host call (WASI is linked async) is dropped at the
//! timeout.
//! Instances come from wasmtime's pooling allocator (slots are reused, so a
//! fresh instance per task is cheap) and from an `InstancePre` made once per
//! plugin file.

pub mod bindings;
pub mod bundle;
pub mod cache;
pub mod deadline;
pub mod fault;
pub mod fonts;
pub mod format;
pub mod limits;
pub mod prepare;
pub mod stdio;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};

use crate::config::LimitsOverride;
use bindings::{FormatPlugin, FormatPluginPre, RenderRequest};
pub use bundle::TemplateInput;
pub use fault::{Fault, Retry};
use limits::TaskState;
pub use limits::{Caps, Limits};

/// Epoch tick: the resolution of the wall-clock timeout.
pub const TICK: Duration = Duration::from_millis(5);

/// How often the plugin directory is checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

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

/// A plugin file as the host sees it (`GET /api/v1/plugins`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginStatus {
    pub file: String,
    pub name: Option<String>,
    pub version: Option<String>,
    pub formats: Vec<String>,
    /// `loaded`; `rejected` (nothing serves from this file); or `stale`
    /// (the newest file was rejected, the previous version keeps serving).
    pub status: &'static str,
    pub error: Option<String>,
}

/// What the sandbox needs to know at construction.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub limits: Limits,
    pub overrides: BTreeMap<String, LimitsOverride>,
    pub cache_dir: PathBuf,
    pub font_dirs: Vec<PathBuf>,
    pub pooling: bool,
}

impl SandboxConfig {
    /// Whether any plugin has a fuel budget (fuel metering is engine-wide).
    fn uses_fuel(&self) -> bool {
        self.limits.fuel.is_some() || self.overrides.values().any(|o| o.fuel.is_some())
    }
}

struct Loaded {
    name: String,
    version: String,
    formats: Vec<FormatInfo>,
    limits: Limits,
    pre: FormatPluginPre<TaskState>,
    /// The component's bytes while it still waits for its `prepare`
    /// snapshot (see [`PluginHost::watch`]); `None` once prepared or when it
    /// has no `prepare`.
    unprepared: Option<Arc<Vec<u8>>>,
}

struct FileEntry {
    stamp: (SystemTime, u64),
    loaded: Option<Arc<Loaded>>,
    error: Option<String>,
}

#[derive(Default)]
struct Registry {
    files: BTreeMap<String, FileEntry>,
    by_format: BTreeMap<String, (Arc<Loaded>, FormatInfo)>,
}

impl Registry {
    /// Formats go to plugins in file-name order; the first claim wins.
    fn index(&mut self) {
        self.by_format.clear();
        for (file, entry) in &self.files {
            let Some(loaded) = &entry.loaded else {
                continue;
            };
            for f in &loaded.formats {
                if let Some((other, _)) = self.by_format.get(&f.name) {
                    tracing::warn!(format = %f.name, %file, kept = %other.name, "format offered twice; keeping the first");
                    continue;
                }
                self.by_format
                    .insert(f.name.clone(), (loaded.clone(), f.clone()));
            }
        }
    }
}

/// A rendered document. Its media type and extension are the format's, as
/// declared and validated at load ([`format`]), never the render's own.
#[derive(Debug)]
pub struct Rendered {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub extension: String,
}

pub struct PluginHost {
    engine: Engine,
    consumes_fuel: bool,
    linker: Linker<TaskState>,
    config: SandboxConfig,
    fonts: Arc<fonts::FontIndex>,
    registry: RwLock<Registry>,
    /// Serialises `prepare` snapshots (one at a time, off the request path).
    preparing: std::sync::Mutex<()>,
    _ticker: Ticker,
}

struct Ticker(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn engine(config: &SandboxConfig) -> wasmtime::Result<Engine> {
    let mut c = wasmtime::Config::new();
    c.wasm_component_model(true);
    c.epoch_interruption(true);
    // Calls are async (`deadline`) but plugins use no component-model
    // concurrency: without it `call_async` runs the call on a fiber
    // directly instead of through the concurrent event loop.
    c.concurrency_support(false);
    c.consume_fuel(config.uses_fuel());
    if config.pooling {
        let max_memory = config
            .overrides
            .values()
            .filter_map(|o| o.memory_mb)
            .map(|mb| (mb as usize) << 20)
            .fold(config.limits.memory_bytes, usize::max);
        let mut pool = wasmtime::PoolingAllocationConfig::new();
        pool.total_component_instances(256)
            .total_core_instances(1024)
            .total_memories(512)
            .total_tables(1024)
            .max_memory_size(max_memory)
            .table_elements(config.limits.table_elements)
            .max_core_instances_per_component(32)
            .max_memories_per_component(8)
            .max_tables_per_component(32)
            // One fiber stack per call in flight (async calls, `deadline`).
            .total_stacks(256)
            .max_component_instance_size(1 << 20)
            .max_core_instance_size(1 << 20)
            // Reset a slot's memory by zeroing its dirty pages (up to 16 MiB)
            // instead of unmapping them: a fresh sandbox then takes no page
            // fault per page it touches (DOCX invoice -16 %, letter -45 %).
            .linear_memory_keep_resident(16 << 20)
            .table_keep_resident(1 << 16)
            // Reset only the pages a task dirtied (Linux >= 6.7 PAGEMAP_SCAN),
            // not all 16 MiB: a prepared plugin's memory starts as its
            // snapshot, and restoring the whole resident part from the image
            // after every task cost ~1 ms (pdf letter).
            .pagemap_scan(wasmtime::Enabled::Auto);
        c.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    }
    Engine::new(&c)
}

impl PluginHost {
    pub fn new(config: SandboxConfig) -> Result<PluginHost, PluginError> {
        let engine = match engine(&config) {
            Ok(e) => e,
            Err(e) if config.pooling => {
                tracing::warn!(error = %e, "pooling allocator unavailable; allocating instances on demand");
                engine(&SandboxConfig {
                    pooling: false,
                    ..config.clone()
                })
                .map_err(|e| PluginError::Engine(e.to_string()))?
            }
            Err(e) => return Err(PluginError::Engine(e.to_string())),
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        FormatPlugin::add_to_linker::<TaskState, wasmtime::component::HasSelf<TaskState>>(
            &mut linker,
            |s| s,
        )
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

        let consumes_fuel = config.uses_fuel();
        Ok(PluginHost {
            engine,
            consumes_fuel,
            linker,
            fonts: Arc::new(fonts::FontIndex::new(config.font_dirs.clone())),
            config,
            registry: RwLock::default(),
            preparing: std::sync::Mutex::new(()),
            _ticker: Ticker(stop),
        })
    }

    /// Default limits (before per-plugin overrides).
    pub fn limits(&self) -> Limits {
        self.config.limits
    }

    /// Bring the registry in line with `dir`: load new and changed `*.wasm`
    /// files, forget removed ones. A changed file that fails to load keeps
    /// its previous version serving. Returns whether anything changed.
    pub fn reload(&self, dir: &Path) -> Result<bool, PluginError> {
        let entries = std::fs::read_dir(dir).map_err(|source| PluginError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let mut present: BTreeMap<String, (PathBuf, (SystemTime, u64))> = BTreeMap::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "wasm") {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let stamp = (
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
            );
            present.insert(
                entry.file_name().to_string_lossy().into_owned(),
                (path, stamp),
            );
        }
        let changed: Vec<(String, PathBuf, (SystemTime, u64))> = {
            let reg = self.registry.read().unwrap_or_else(|p| p.into_inner());
            present
                .iter()
                .filter(|(file, (_, stamp))| reg.files.get(*file).is_none_or(|e| e.stamp != *stamp))
                .map(|(file, (path, stamp))| (file.clone(), path.clone(), *stamp))
                .collect()
        };
        // Compile outside the lock: tasks keep rendering meanwhile.
        let results: Vec<(String, (SystemTime, u64), Result<Loaded, String>)> = changed
            .into_iter()
            .map(|(file, path, stamp)| (file, stamp, self.load_file(&path)))
            .collect();

        let mut reg = self.registry.write().unwrap_or_else(|p| p.into_inner());
        let before = reg.files.len();
        reg.files.retain(|file, _| {
            let keep = present.contains_key(file);
            if !keep {
                tracing::info!(%file, "plugin removed");
            }
            keep
        });
        let mut any = reg.files.len() != before;
        for (file, stamp, result) in results {
            any = true;
            let previous = reg.files.get(&file).and_then(|e| e.loaded.clone());
            let entry = match result {
                Ok(loaded) => {
                    let names: Vec<&str> = loaded.formats.iter().map(|f| f.name.as_str()).collect();
                    tracing::info!(%file, plugin = %loaded.name, version = %loaded.version, formats = ?names, waits_for_prepare = loaded.unprepared.is_some(), "plugin loaded");
                    FileEntry {
                        stamp,
                        loaded: Some(Arc::new(loaded)),
                        error: None,
                    }
                }
                Err(error) => {
                    let kept = previous.as_ref().map(|p| p.version.clone());
                    tracing::error!(%file, %error, kept_version = ?kept, "plugin rejected");
                    FileEntry {
                        stamp,
                        loaded: previous,
                        error: Some(error),
                    }
                }
            };
            reg.files.insert(file, entry);
        }
        if any {
            reg.index();
        }
        Ok(any)
    }

    /// Check `dir` every [`WATCH_INTERVAL`] until the host is dropped, and
    /// prepare loaded plugins that export `prepare` (no snapshot cached
    /// yet) in the background: they serve as plain components meanwhile,
    /// then tasks start from the snapshot. `export-host render` does not
    /// watch, so it uses a cached snapshot but never makes one.
    pub fn watch(self: &Arc<Self>, dir: PathBuf) {
        let weak: Weak<PluginHost> = Arc::downgrade(self);
        let preparer = weak.clone();
        let spawned = std::thread::Builder::new()
            .name("plugin-prepare".into())
            .spawn(move || {
                // Below the render threads (`worker.render_nice`): preparing
                // is background work.
                let me = rustix::thread::gettid();
                if let Err(e) = rustix::process::setpriority_process(Some(me), 19) {
                    tracing::warn!(error = %e, "cannot lower the plugin preparer's priority");
                }
                loop {
                    std::thread::sleep(WATCH_INTERVAL);
                    let Some(host) = preparer.upgrade() else {
                        return;
                    };
                    host.prepare_waiting();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the plugin preparer");
        }
        let spawned = std::thread::Builder::new()
            .name("plugin-watch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(WATCH_INTERVAL);
                    let Some(host) = weak.upgrade() else { return };
                    if let Err(e) = host.reload(&dir) {
                        tracing::warn!(error = %e, "cannot scan plugin directory");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the plugin watcher");
        }
    }

    /// Snapshot every loaded plugin that still waits for its `prepare`, and
    /// swap the snapshot in (if the file has not changed meanwhile).
    pub fn prepare_waiting(&self) {
        let _one = self.preparing.lock().unwrap_or_else(|p| p.into_inner());
        let waiting: Vec<(String, Arc<Loaded>, Arc<Vec<u8>>)> = {
            let reg = self.registry.read().unwrap_or_else(|p| p.into_inner());
            reg.files
                .iter()
                .filter_map(|(file, e)| {
                    let loaded = e.loaded.clone()?;
                    let bytes = loaded.unprepared.clone()?;
                    Some((file.clone(), loaded, bytes))
                })
                .collect()
        };
        for (file, loaded, bytes) in waiting {
            let started = std::time::Instant::now();
            let prepared = self.prepared(&bytes).and_then(|component| {
                let pre = self
                    .linker
                    .instantiate_pre(&component)
                    .map_err(|e| format!("{e:#}"))?;
                FormatPluginPre::new(pre).map_err(|e| format!("{e:#}"))
            });
            let mut reg = self.registry.write().unwrap_or_else(|p| p.into_inner());
            let Some(entry) = reg.files.get_mut(&file) else {
                continue;
            };
            let current = entry
                .loaded
                .as_ref()
                .is_some_and(|l| Arc::ptr_eq(l, &loaded));
            match prepared {
                Ok(pre) if current => {
                    entry.loaded = Some(Arc::new(Loaded {
                        name: loaded.name.clone(),
                        version: loaded.version.clone(),
                        formats: loaded.formats.clone(),
                        limits: loaded.limits,
                        pre,
                        unprepared: None,
                    }));
                    reg.index();
                    tracing::info!(%file, plugin = %loaded.name, elapsed_ms = started.elapsed().as_millis() as u64, "plugin prepared; tasks now start from its snapshot");
                }
                Ok(_) => {}
                Err(error) if current => {
                    tracing::warn!(%file, %error, "plugin not prepared; every task initialises it");
                    // Do not try again until the file changes.
                    entry.loaded = Some(Arc::new(Loaded {
                        name: loaded.name.clone(),
                        version: loaded.version.clone(),
                        formats: loaded.formats.clone(),
                        limits: loaded.limits,
                        pre: loaded.pre.clone(),
                        unprepared: None,
                    }));
                    reg.index();
                }
                Err(_) => {}
            }
        }
    }

    fn limits_for(&self, plugin: &str) -> Limits {
        match self.config.overrides.get(plugin) {
            Some(o) => self.config.limits.with(o),
            None => self.config.limits,
        }
    }

    fn load_file(&self, path: &Path) -> Result<Loaded, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
        // A snapshot made earlier (same component, same fonts) serves at
        // once; otherwise the plain component, prepared later in the
        // background (`watch`).
        let may_prepare = prepare::may_export(&bytes);
        let snapshot = may_prepare
            .then(|| prepare::cached(&self.config.cache_dir, &bytes, self.fonts.fingerprint()))
            .flatten()
            .and_then(|snap| cache::load(&self.engine, &self.config.cache_dir, &snap).ok());
        let prepared = snapshot.is_some();
        let component = match snapshot {
            Some(component) => component,
            None => cache::load(&self.engine, &self.config.cache_dir, &bytes)
                .map_err(|e| format!("not a valid component: {e:#}"))?,
        };
        self.check_world(&component)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| format!("imports something the host does not provide: {e:#}"))?;
        let pre = FormatPluginPre::new(pre)
            .map_err(|e| format!("does not export {}: {e:#}", bindings::RENDERER_EXPORT))?;
        let mut store = self.store(&self.config.limits);
        let timeout = self.config.limits.timeout;
        let info = deadline::within(timeout, async {
            let plugin = pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| format!("cannot instantiate: {e:#}"))?;
            plugin
                .export_host_plugin_renderer()
                .call_info(&mut store)
                .await
                .map_err(|e| format!("info() failed: {e:#}"))
        })
        .map_err(|e| format!("info() failed: {e}"))??;
        if crate::ids::validate("plugin name", &info.name).is_err() {
            return Err(format!("plugin name {:?} is not a valid id", info.name));
        }
        let mut formats = Vec::new();
        for f in info.formats {
            if crate::ids::validate("format", &f.name).is_err() {
                return Err(format!("format name {:?} is not a valid id", f.name));
            }
            // Result paths and download headers are built from these.
            format::check_extension(&f.extension)
                .and_then(|()| format::check_media_type(&f.media_type))
                .map_err(|e| format!("format {:?}: {e}", f.name))?;
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
        let limits = self.limits_for(&info.name);
        Ok(Loaded {
            limits,
            name: info.name,
            version: info.version,
            formats,
            pre,
            unprepared: (may_prepare && !prepared).then(|| Arc::new(bytes)),
        })
    }

    /// The component started from its `prepare` snapshot (made now, and
    /// cached).
    fn prepared(&self, bytes: &[u8]) -> Result<Component, String> {
        let component = prepare::snapshot(
            &self.engine,
            &self.linker,
            self.store(&self.config.limits),
            self.config.limits.timeout,
            &self.config.cache_dir,
            self.fonts.fingerprint(),
            bytes,
        )
        .and_then(|snap| {
            cache::load(&self.engine, &self.config.cache_dir, &snap)
                .map_err(|e| format!("the snapshot does not compile: {e:#}"))
        })?;
        self.check_world(&component)?;
        Ok(component)
    }

    /// Refuse components built against another version of the contract,
    /// naming both versions.
    fn check_world(&self, component: &Component) -> Result<(), String> {
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        if exports.iter().any(|e| bindings::renderer_compatible(e)) {
            return Ok(());
        }
        let prefix = format!("{}/renderer@", bindings::WIT_PACKAGE);
        match exports.iter().find(|e| e.starts_with(&prefix)) {
            Some(other) => Err(format!(
                "WIT version mismatch: the component exports {other}, this host implements {} (accepts {}@0.1.0 to @{}, semver compatible)",
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

    fn store(&self, limits: &Limits) -> Store<TaskState> {
        let mut store = Store::new(&self.engine, TaskState::new(limits, self.fonts.clone()));
        store.limiter(|s| &mut s.limiter);
        let ticks = limits.timeout.as_nanos().div_ceil(TICK.as_nanos()) as u64;
        store.set_epoch_deadline(ticks.max(1));
        store.epoch_deadline_trap();
        if let Some(fuel) = limits.fuel {
            let _ = store.set_fuel(fuel);
        } else if self.consumes_fuel {
            let _ = store.set_fuel(u64::MAX);
        }
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
        let reg = self.registry.read().unwrap_or_else(|p| p.into_inner());
        reg.files
            .iter()
            .map(|(file, e)| PluginStatus {
                file: file.clone(),
                name: e.loaded.as_ref().map(|l| l.name.clone()),
                version: e.loaded.as_ref().map(|l| l.version.clone()),
                formats: e
                    .loaded
                    .as_ref()
                    .map(|l| l.formats.iter().map(|f| f.name.clone()).collect())
                    .unwrap_or_default(),
                status: match (&e.loaded, &e.error) {
                    (Some(_), None) => "loaded",
                    (Some(_), Some(_)) => "stale",
                    (None, _) => "rejected",
                },
                error: e.error.clone(),
            })
            .collect()
    }

    /// Render in a fresh sandbox. Blocking: call from a blocking thread.
    /// The plugin version that starts a task finishes it, even if the file
    /// is replaced meanwhile.
    pub fn render(
        &self,
        format: &str,
        template_name: &str,
        template: impl Into<TemplateInput>,
        data: String,
        options: Vec<(String, String)>,
    ) -> Result<Rendered, Fault> {
        self.render_capped(
            format,
            template_name,
            template,
            data,
            options,
            Caps::default(),
        )
    }

    /// [`render`](Self::render) with the plugin's limits tightened by
    /// `caps` (a tenant's timeout and memory).
    pub fn render_capped(
        &self,
        format: &str,
        template_name: &str,
        template: impl Into<TemplateInput>,
        data: String,
        options: Vec<(String, String)>,
        caps: Caps,
    ) -> Result<Rendered, Fault> {
        let found = {
            let reg = self.registry.read().unwrap_or_else(|p| p.into_inner());
            reg.by_format.get(format).cloned()
        };
        let (plugin, declared) = found.ok_or_else(|| Fault::NoPlugin(format.to_string()))?;
        let limits = plugin.limits.capped(caps);
        let mut store = self.store(&limits);
        let template = template.into();
        store.data_mut().bundle = template.bundle;
        let request = RenderRequest {
            format: format.into(),
            template_name: template_name.into(),
            template: template.bytes,
            data,
            options,
        };
        let outcome = deadline::within(limits.timeout, async {
            let instance: FormatPlugin = plugin.pre.instantiate_async(&mut store).await?;
            instance
                .export_host_plugin_renderer()
                .call_render(&mut store, &request)
                .await
        });
        log_stdio(store.data(), &plugin.name);
        crate::telemetry::sandbox_memory_peak(&plugin.name, store.data().limiter.memory_peak);
        let Ok(outcome) = outcome else {
            // Blocked in a host call at the deadline (a guest spinning in
            // its own code traps instead, below).
            return Err(Fault::Timeout {
                limit_ms: limits.timeout.as_millis() as u64,
            });
        };
        match outcome {
            Ok(Ok(doc)) if doc.bytes.len() > limits.output_bytes => Err(Fault::OutputTooLarge {
                size: doc.bytes.len(),
                limit: limits.output_bytes,
            }),
            Ok(Ok(doc)) => format::accept(doc, &declared).inspect_err(|fault| {
                tracing::warn!(plugin = %plugin.name, %fault, "plugin returned a document unlike its declared format");
            }),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(classify_trap(&e, store.data(), &limits)),
        }
    }
}

/// Attach what the guest printed to the current (task) span's log.
fn log_stdio(state: &TaskState, plugin: &str) {
    for (stream, pipe) in [("stdout", &state.stdout), ("stderr", &state.stderr)] {
        let (text, dropped) = pipe.contents();
        if !text.is_empty() || dropped > 0 {
            tracing::info!(plugin, stream, dropped_bytes = dropped, output = %text.trim_end(), "guest output");
        }
    }
}

fn classify_trap(e: &wasmtime::Error, state: &TaskState, limits: &Limits) -> Fault {
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => {
            return Fault::Timeout {
                limit_ms: limits.timeout.as_millis() as u64,
            };
        }
        Some(wasmtime::Trap::OutOfFuel) => {
            return Fault::FuelExhausted {
                fuel: limits.fuel.unwrap_or(0),
            };
        }
        _ => {}
    }
    if state.limiter.memory_exceeded || state.limiter.table_exceeded {
        return Fault::OutOfMemory {
            limit_mb: (limits.memory_bytes >> 20) as u64,
        };
    }
    let text = format!("{e:#}");
    if text.contains("resource limit") || text.contains("pooling") {
        // Pool slots exhausted or similar: the host's trouble, worth a retry.
        return Fault::Host(text);
    }
    Fault::Trap(text.lines().next().unwrap_or("trap").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(memory_mb: usize) -> (PluginHost, tempfile::TempDir) {
        let cache = tempfile::tempdir().expect("tempdir");
        let limits = Limits {
            timeout: Duration::from_secs(5),
            memory_bytes: memory_mb << 20,
            table_elements: 1000,
            output_bytes: 1 << 20,
            fuel: None,
            stdio_bytes: 1024,
        };
        let host = PluginHost::new(SandboxConfig {
            limits,
            overrides: BTreeMap::new(),
            cache_dir: cache.path().to_owned(),
            font_dirs: Vec::new(),
            pooling: true,
        })
        .expect("host");
        (host, cache)
    }

    /// A component of `n` core instances with a memory of `mb` MiB each.
    fn memories(n: usize, mb: usize) -> String {
        let pages = mb * 16;
        let parts: String = (0..n)
            .map(|i| {
                format!("(core module $m{i} (memory {pages})) (core instance (instantiate $m{i}))")
            })
            .collect();
        format!("(component {parts})")
    }

    /// The cap holds for the component instance, through the pooling
    /// allocator (which allows up to 8 memories per component, each up to
    /// the cap): two memories of 20 MiB do not fit 32 MiB.
    #[test]
    fn a_components_memories_share_one_memory_cap() {
        let (host, _cache) = host(32);
        let limits = host.limits();
        let instantiate = |wat: String| {
            let component = Component::new(&host.engine, wat).expect("component");
            let mut store = host.store(&limits);
            let r = Linker::<TaskState>::new(&host.engine).instantiate(&mut store, &component);
            (store, r.map(|_| ()))
        };
        let (store, one) = instantiate(memories(1, 20));
        assert!(one.is_ok(), "{one:?}");
        assert_eq!(store.data().limiter.memory_peak, 20 << 20);
        let (store, two) = instantiate(memories(2, 20));
        let err = two.expect_err("40 MiB in two memories of a 32 MiB sandbox");
        assert!(store.data().limiter.memory_exceeded);
        let fault = classify_trap(&err, store.data(), &limits);
        assert_eq!(fault.class(), "out_of_memory", "{fault}");
        let (store, eight) = instantiate(memories(8, 4));
        assert!(eight.is_ok(), "8 x 4 MiB = 32 MiB fits: {eight:?}");
        assert_eq!(store.data().limiter.memory_peak, 32 << 20);
    }
}
