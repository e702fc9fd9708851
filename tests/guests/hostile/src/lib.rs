//! A plugin that attacks the host. It declares one honest format (`hostile`,
//! `text/plain`, `.txt`); the template's first word says how it then lies
//! or stalls, an optional `:N` argument says how much:
//!
//! | template    | behaviour                                                        |
//! |-------------|------------------------------------------------------------------|
//! | `ok`        | returns the data as the document, as declared                    |
//! | `escape:N`  | an N-byte document with extension `txt/../../../escaped`         |
//! | `crlf`      | a document whose media type carries a CRLF and a header          |
//! | `sleep:N`   | sleeps N seconds (`std::thread::sleep`: a monotonic-clock pollable |
//! |             | blocked on in the host), then `ok`                               |
use export_host_plugin_kit::*;

struct Hostile;

impl Plugin for Hostile {
    fn info() -> PluginInfo {
        PluginInfo::new("hostile", "0.1.0").format(OutputFormat::new(
            "hostile",
            "text/plain",
            "txt",
            &["hostile"],
        ))
    }

    fn render(req: RenderRequest) -> Result<Document, RenderError> {
        let text = req.template_text()?.trim().to_string();
        let (cmd, arg) = match text.split_once(':') {
            Some((c, a)) => (c.to_string(), a.trim().parse::<u64>().unwrap_or(0)),
            None => (text.clone(), 0),
        };
        let ok = || Ok(Document::new(req.data.clone().into_bytes(), "text/plain", "txt"));
        match cmd.as_str() {
            "ok" => ok(),
            "escape" => Ok(Document::new(
                vec![b'x'; arg as usize],
                "text/plain",
                "txt/../../../escaped",
            )),
            "crlf" => Ok(Document::new(
                b"split".to_vec(),
                "text/plain\r\nX-Injected: 1",
                "txt",
            )),
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(arg));
                ok()
            }
            other => Err(RenderError::bad_template(format!(
                "unknown hostile command {other:?}"
            ))),
        }
    }
}

export_plugin!(Hostile);
