//! A plugin built against export-host:plugin@0.2.0, a version the host does
//! not implement: it must be refused at load with both versions named.
wit_bindgen::generate!({ world: "format-plugin", path: "wit" });

use exports::export_host::plugin::renderer::Guest;
use export_host::plugin::types::{Document, OutputFormat, PluginInfo, RenderError, RenderRequest};

struct Future;

impl Guest for Future {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "future".into(),
            version: "2.0.0".into(),
            formats: vec![OutputFormat {
                name: "future".into(),
                media_type: "text/plain".into(),
                extension: "txt".into(),
                template_kinds: vec!["txt".into()],
            }],
        }
    }
    fn render(_req: RenderRequest) -> Result<Document, RenderError> {
        Ok(Document { bytes: b"from the future".to_vec(), media_type: "text/plain".into(), extension: "txt".into() })
    }
}

export!(Future);
