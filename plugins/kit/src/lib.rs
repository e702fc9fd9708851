//! The plugin authoring kit: everything a format plugin needs, without
//! touching the generated bindings.
//!
//! ```ignore
//! use export_host_plugin_kit::*;
//! struct Upper;
//! impl Plugin for Upper {
//!     fn info() -> PluginInfo { PluginInfo::new("upper", env!("CARGO_PKG_VERSION"))
//!         .format(OutputFormat::new("upper", "text/plain", "txt", &["txt"])) }
//!     fn render(req: RenderRequest) -> Result<Document, RenderError> {
//!         let text = req.template_text()?;
//!         Ok(Document::new(text.to_uppercase().into_bytes(), "text/plain", "txt"))
//!     }
//! }
//! export_plugin!(Upper);
//! ```
//!
//! A plugin with work to do once per load (see `prepare` in wit/plugin.wit)
//! names a function: `export_plugin!(Upper, prepare = my_prepare);`.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "prepared-plugin",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "export_host_plugin_kit::bindings",
    });
}

pub use bindings::export_host::plugin::types::{
    Document, ErrorInfo, OutputFormat, PluginInfo, RenderError, RenderRequest,
};
pub use bindings::exports::export_host::plugin::prepare::Guest as Prepare;
pub use bindings::exports::export_host::plugin::renderer::Guest as Plugin;

/// Export `$ty` (which implements [`Plugin`]) as this component's renderer,
/// with a no-op `prepare`, or with `prepare = path::to::function` run once
/// when the host loads the plugin (its state is snapshotted).
#[macro_export]
macro_rules! export_plugin {
    ($ty:ident) => {
        impl $crate::Prepare for $ty {
            fn prepare() {}
        }
        $crate::bindings::export!($ty with_types_in $crate::bindings);
    };
    ($ty:ident, prepare = $prepare:path) => {
        impl $crate::Prepare for $ty {
            fn prepare() {
                $prepare()
            }
        }
        $crate::bindings::export!($ty with_types_in $crate::bindings);
    };
}

impl PluginInfo {
    pub fn new(name: &str, version: &str) -> Self {
        PluginInfo {
            name: name.into(),
            version: version.into(),
            formats: Vec::new(),
        }
    }
    pub fn format(mut self, format: OutputFormat) -> Self {
        self.formats.push(format);
        self
    }
}

impl OutputFormat {
    pub fn new(name: &str, media_type: &str, extension: &str, template_kinds: &[&str]) -> Self {
        OutputFormat {
            name: name.into(),
            media_type: media_type.into(),
            extension: extension.into(),
            template_kinds: template_kinds.iter().map(|k| (*k).into()).collect(),
        }
    }
}

impl Document {
    pub fn new(bytes: Vec<u8>, media_type: &str, extension: &str) -> Self {
        Document {
            bytes,
            media_type: media_type.into(),
            extension: extension.into(),
        }
    }
}

impl ErrorInfo {
    pub fn new(message: impl Into<String>) -> Self {
        ErrorInfo {
            message: message.into(),
            location: None,
        }
    }
    pub fn at(mut self, location: impl Into<String>) -> Self {
        self.location = Some(location.into());
        self
    }
}

impl RenderError {
    pub fn bad_template(message: impl Into<String>) -> Self {
        RenderError::BadTemplate(ErrorInfo::new(message))
    }
    pub fn bad_data(message: impl Into<String>) -> Self {
        RenderError::BadData(ErrorInfo::new(message))
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        RenderError::Unsupported(ErrorInfo::new(message))
    }
    pub fn internal(message: impl Into<String>) -> Self {
        RenderError::Internal(ErrorInfo::new(message))
    }
}

impl RenderRequest {
    /// The template as UTF-8 text, or a `bad-template` error naming the file.
    pub fn template_text(&self) -> Result<&str, RenderError> {
        std::str::from_utf8(&self.template).map_err(|e| {
            RenderError::BadTemplate(
                ErrorInfo::new(format!("template is not valid UTF-8: {e}"))
                    .at(self.template_name.clone()),
            )
        })
    }

    /// The value of option `key`, if the request carries it.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}
