//! Format `flaky`, version 0.1.0: a broken build that fails transiently
//! (`internal`) on every render, so its tasks end in the dead-letter queue.
//! `flaky-fixed` is the same plugin, fixed: dropping it in over this one
//! and replaying the dead tasks must make them succeed (tests/dlq.rs).
use export_host_plugin_kit::*;

struct Flaky;

impl Plugin for Flaky {
    fn info() -> PluginInfo {
        PluginInfo::new("flaky", "0.1.0").format(OutputFormat::new(
            "flaky",
            "text/plain",
            "txt",
            &["flaky"],
        ))
    }
    fn render(_req: RenderRequest) -> Result<Document, RenderError> {
        Err(RenderError::internal("flaky 0.1.0: broken build"))
    }
}

export_plugin!(Flaky);
