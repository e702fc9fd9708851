//! `template` plugin: the starting point for a new format plugin
//! (`scripts/new-plugin.sh NAME` copies it). It renders `.txt` templates by
//! replacing each `{{ key }}` with the data's top-level value `key` (strings
//! as they are, anything else as JSON). Replace `render` with your format.
//!
//! Build: `scripts/build-plugins.sh template` → `plugins/dist/template.wasm`.
use export_host_plugin_kit::*;

/// Plugin name and output format name (`output_format` in requests).
const NAME: &str = "template";

struct Starter;

impl Plugin for Starter {
    /// Called once when the host loads the plugin.
    fn info() -> PluginInfo {
        PluginInfo::new(NAME, env!("CARGO_PKG_VERSION")).format(OutputFormat::new(
            NAME,                        // format name
            "text/plain; charset=utf-8", // media type of the document
            "txt",                       // file extension of the document
            &["txt"],                    // template kinds (file extensions) it renders from
        ))
    }

    /// Called for every task, in a fresh sandbox. Errors: `bad_template`,
    /// `bad_data`, `unsupported` fail the task for good; `internal` is retried.
    fn render(req: RenderRequest) -> Result<Document, RenderError> {
        let source = req.template_text()?; // bad_template unless UTF-8
        let data: serde_json::Value = serde_json::from_str(&req.data)
            .map_err(|e| RenderError::bad_data(format!("data is not valid JSON: {e}")))?;
        let out = fill(source, &data, &req.template_name)?;
        Ok(Document::new(
            out.into_bytes(),
            "text/plain; charset=utf-8",
            "txt",
        ))
    }
}

/// Replace every `{{ key }}` in `source` with `data[key]`.
fn fill(source: &str, data: &serde_json::Value, file: &str) -> Result<String, RenderError> {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let line = source[..source.len() - rest.len() + start]
            .matches('\n')
            .count()
            + 1;
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(RenderError::BadTemplate(
                ErrorInfo::new("`{{` without a closing `}}`").at(format!("{file}:{line}")),
            ));
        };
        let key = after[..end].trim();
        match data.get(key) {
            Some(serde_json::Value::String(s)) => out.push_str(s),
            Some(other) => out.push_str(&other.to_string()),
            None => {
                return Err(RenderError::BadData(
                    ErrorInfo::new(format!("no value for `{key}` in the data"))
                        .at(format!("{file}:{line}")),
                ));
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

export_plugin!(Starter);
