//! Format `flaky`, version 0.2.0: the fixed build of `flaky-broken`. Returns
//! the template text, a newline and the data.
use export_host_plugin_kit::*;

struct Flaky;

impl Plugin for Flaky {
    fn info() -> PluginInfo {
        PluginInfo::new("flaky", "0.2.0").format(OutputFormat::new(
            "flaky",
            "text/plain",
            "txt",
            &["flaky"],
        ))
    }
    fn render(req: RenderRequest) -> Result<Document, RenderError> {
        let text = format!("{}\n{}", req.template_text()?.trim(), req.data);
        Ok(Document::new(text.into_bytes(), "text/plain", "txt"))
    }
}

export_plugin!(Flaky);
