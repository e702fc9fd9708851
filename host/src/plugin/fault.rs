//! Why a render did not produce a document, and whether trying again can help.

use serde::Serialize;

use super::bindings::RenderError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Fault {
    #[error("render exceeded the time limit of {limit_ms} ms")]
    Timeout { limit_ms: u64 },
    #[error("render used up its fuel ({fuel} units)")]
    FuelExhausted { fuel: u64 },
    #[error("plugin exceeded the memory limit of {limit_mb} MB")]
    OutOfMemory { limit_mb: u64 },
    #[error("plugin returned {size} bytes, more than the output limit of {limit} bytes")]
    OutputTooLarge { size: usize, limit: usize },
    /// The document is not what the format declared at load (another
    /// extension or media type): the plugin's fault, and nothing is stored.
    #[error("plugin returned a document the host refuses: {0}")]
    BadOutput(String),
    #[error("plugin trapped: {0}")]
    Trap(String),
    #[error("plugin does not implement the host's contract: {0}")]
    WitMismatch(String),
    #[error("bad template{}: {message}", location_suffix(.location))]
    BadTemplate {
        message: String,
        location: Option<String>,
    },
    #[error("bad data{}: {message}", location_suffix(.location))]
    BadData {
        message: String,
        location: Option<String>,
    },
    #[error("unsupported{}: {message}", location_suffix(.location))]
    Unsupported {
        message: String,
        location: Option<String>,
    },
    #[error("plugin internal error{}: {message}", location_suffix(.location))]
    Internal {
        message: String,
        location: Option<String>,
    },
    #[error("no plugin renders format {0:?}")]
    NoPlugin(String),
    #[error("host error: {0}")]
    Host(String),
}

fn location_suffix(location: &Option<String>) -> String {
    location
        .as_ref()
        .map(|l| format!(" at {l}"))
        .unwrap_or_default()
}

/// Whether a fault ends the task or earns a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Retry {
    /// The same input will fail the same way: fail the task now.
    Permanent,
    /// May succeed later: retry per policy, then dead-letter.
    Transient,
}

impl Fault {
    /// Stable machine-readable class, used in task status and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            Fault::Timeout { .. } => "timeout",
            Fault::FuelExhausted { .. } => "fuel_exhausted",
            Fault::OutOfMemory { .. } => "out_of_memory",
            Fault::OutputTooLarge { .. } => "output_too_large",
            Fault::BadOutput(_) => "bad_output",
            Fault::Trap(_) => "trap",
            Fault::WitMismatch(_) => "wit_mismatch",
            Fault::BadTemplate { .. } => "bad_template",
            Fault::BadData { .. } => "bad_data",
            Fault::Unsupported { .. } => "unsupported",
            Fault::Internal { .. } => "internal",
            Fault::NoPlugin(_) => "no_plugin",
            Fault::Host(_) => "host",
        }
    }

    /// Rendering is deterministic for a given plugin, template and data, so
    /// limits, traps and template/data errors recur: permanent. Only what
    /// the plugin calls internal, and the host's own trouble (I/O, a plugin
    /// being replaced), is worth another try.
    pub fn retry(&self) -> Retry {
        match self {
            Fault::Internal { .. } | Fault::Host(_) | Fault::NoPlugin(_) => Retry::Transient,
            _ => Retry::Permanent,
        }
    }
}

impl From<RenderError> for Fault {
    fn from(e: RenderError) -> Fault {
        match e {
            RenderError::BadTemplate(i) => Fault::BadTemplate {
                message: i.message,
                location: i.location,
            },
            RenderError::BadData(i) => Fault::BadData {
                message: i.message,
                location: i.location,
            },
            RenderError::Unsupported(i) => Fault::Unsupported {
                message: i.message,
                location: i.location,
            },
            RenderError::Internal(i) => Fault::Internal {
                message: i.message,
                location: i.location,
            },
        }
    }
}
