//! Does nothing: an empty document for every request. Measures the cost of
//! the sandbox itself (instantiate + call + drop).
use export_host_plugin_kit::*;

struct Noop;

impl Plugin for Noop {
    fn info() -> PluginInfo {
        PluginInfo::new("noop", "0.1.0").format(OutputFormat::new(
            "noop",
            "application/octet-stream",
            "bin",
            &["noop", "txt"],
        ))
    }
    fn render(_req: RenderRequest) -> Result<Document, RenderError> {
        Ok(Document::new(Vec::new(), "application/octet-stream", "bin"))
    }
}

export_plugin!(Noop);
