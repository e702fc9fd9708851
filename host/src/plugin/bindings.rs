//! The one `bindgen!` site: host-side types generated from `wit/`.
//! Everything else uses these through `plugin::`.

wasmtime::component::bindgen!({
    world: "format-plugin",
    path: "../wit",
});

pub use self::export_host::plugin::fonts;
pub use self::export_host::plugin::types::{
    Document, ErrorInfo, OutputFormat, PluginInfo, RenderError, RenderRequest,
};

/// The WIT package this host was built against.
pub const WIT_PACKAGE: &str = "export-host:plugin";
pub const WIT_VERSION: &str = "0.1.0";
/// The export every plugin must provide, with its version.
pub const RENDERER_EXPORT: &str = "export-host:plugin/renderer@0.1.0";
