//! `text` plugin: renders Jinja templates (minijinja, sandboxed: no file
//! system, no Python objects) to plain text, HTML or Markdown.
//! HTML output auto-escapes every substituted value.
use export_host_plugin_kit::*;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};

struct Text;

impl Plugin for Text {
    fn info() -> PluginInfo {
        PluginInfo::new("text", env!("CARGO_PKG_VERSION"))
            .format(OutputFormat::new(
                "txt",
                "text/plain; charset=utf-8",
                "txt",
                &["txt", "j2"],
            ))
            .format(OutputFormat::new(
                "html",
                "text/html; charset=utf-8",
                "html",
                &["html", "j2"],
            ))
            .format(OutputFormat::new(
                "md",
                "text/markdown; charset=utf-8",
                "md",
                &["md", "j2"],
            ))
    }

    fn render(req: RenderRequest) -> Result<Document, RenderError> {
        let format = Self::info()
            .formats
            .into_iter()
            .find(|f| f.name == req.format)
            .ok_or_else(|| RenderError::unsupported(format!("format {:?}", req.format)))?;
        let source = req.template_text()?;
        let data: serde_json::Value = serde_json::from_str(&req.data)
            .map_err(|e| RenderError::bad_data(format!("data is not valid JSON: {e}")))?;
        if !data.is_object() {
            return Err(RenderError::bad_data("data must be a JSON object"));
        }

        let mut env = Environment::new();
        let html = format.name == "html";
        env.set_auto_escape_callback(move |_| {
            if html {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        if req.option("strict") == Some("true") {
            env.set_undefined_behavior(UndefinedBehavior::Strict);
        }
        let template = env
            .template_from_named_str(&req.template_name, source)
            .map_err(|e| template_error(&e))?;
        let out = template
            .render(minijinja::value::Serde(&data))
            .map_err(|e| template_error(&e))?;
        Ok(Document::new(
            out.into_bytes(),
            &format.media_type,
            &format.extension,
        ))
    }
}

fn template_error(e: &minijinja::Error) -> RenderError {
    let info = ErrorInfo::new(e.to_string());
    let info = match (e.name(), e.line()) {
        (Some(name), Some(line)) => info.at(format!("{name}:{line}")),
        _ => info,
    };
    match e.kind() {
        minijinja::ErrorKind::UndefinedError => RenderError::BadData(info),
        _ => RenderError::BadTemplate(info),
    }
}

export_plugin!(Text);
