//! The one `bindgen!` site: host-side types generated from `wit/`.
//! Everything else uses these through `plugin::`.

wasmtime::component::bindgen!({
    world: "format-plugin",
    path: "../wit",
    // Called with `call_async` (see `deadline`): WASI is linked async so a
    // guest blocked in a host call can be stopped. The host's own imports
    // (fonts, bundle) never block and stay synchronous.
    exports: { default: async },
});

pub use self::export_host::plugin::bundle;
pub use self::export_host::plugin::fonts;
pub use self::export_host::plugin::types::{
    Document, ErrorInfo, OutputFormat, PluginInfo, RenderError, RenderRequest,
};

/// The WIT package this host was built against.
pub const WIT_PACKAGE: &str = "export-host:plugin";
pub const WIT_VERSION: &str = "0.1.1";
/// The export every plugin must provide, with its version.
pub const RENDERER_EXPORT: &str = "export-host:plugin/renderer@0.1.1";

/// Whether `export` is a renderer this host can drive: any 0.1.x (semver
/// compatible; wasmtime matches the names the same way).
pub fn renderer_compatible(export: &str) -> bool {
    export
        .strip_prefix("export-host:plugin/renderer@0.1.")
        .is_some_and(|patch| !patch.is_empty() && patch.bytes().all(|b| b.is_ascii_digit()))
}
