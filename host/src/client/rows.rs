//! Rows of a batch: a JSON Lines file read into [`Row`]s, and rows grouped
//! into batch requests ([`Chunk`]s).
//!
//! Each non-blank line is one task. A line is either
//!
//! * a **data object** — the task's `data`; template, format and priority
//!   come from the command line (`--template`, `--format`, `--priority`); or
//! * a **task object** — an object with a `data` object and nothing but
//!   `template_id`, `output_format` and `priority` beside it; the keys it has
//!   override the command line's for that row.
//!
//! Data that itself looks like a task object is sent by wrapping it:
//! `{"data": {...}}`.

use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Keys a task object may have besides `data`.
const TASK_KEYS: [&str; 3] = ["template_id", "output_format", "priority"];

/// Bytes of `data` in one batch request at most (the server's body limit is
/// at least 32 MiB with the default limits).
pub const MAX_CHUNK_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RowsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("line {line}: not valid JSON: {message}")]
    Json { line: usize, message: String },
    #[error("line {line}: {message}")]
    Invalid { line: usize, message: String },
    #[error("{what}: no rows (every line is blank)")]
    Empty { what: String },
}

/// What the command line says for rows that do not say otherwise.
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    pub template_id: Option<String>,
    pub output_format: Option<String>,
    pub priority: Option<i32>,
}

/// One task to submit.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// 1-based line number in the input (1 for a single `--data` file).
    pub line: usize,
    pub template_id: String,
    pub output_format: String,
    pub priority: Option<i32>,
    pub data: Value,
}

/// Read a JSON Lines file.
pub fn read_jsonl(path: &Path, defaults: &Defaults) -> Result<Vec<Row>, RowsError> {
    let text = std::fs::read_to_string(path).map_err(|source| RowsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let rows = parse_jsonl(&text, defaults)?;
    if rows.is_empty() {
        return Err(RowsError::Empty {
            what: path.display().to_string(),
        });
    }
    Ok(rows)
}

/// Parse JSON Lines text; blank lines are skipped.
pub fn parse_jsonl(text: &str, defaults: &Defaults) -> Result<Vec<Row>, RowsError> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|e| RowsError::Json {
            line: line_no,
            message: e.to_string(),
        })?;
        rows.push(row(line_no, value, defaults)?);
    }
    Ok(rows)
}

/// One row from a parsed line (or a whole `--data` file, as line 1).
pub fn row(line: usize, value: Value, defaults: &Defaults) -> Result<Row, RowsError> {
    let invalid = |message: String| RowsError::Invalid { line, message };
    let Value::Object(object) = value else {
        return Err(invalid(format!(
            "expected a JSON object (the task's data, or a task object with \"data\"), got {}",
            kind(&value)
        )));
    };
    let (data, template_id, output_format, priority) = if is_task_object(&object) {
        let mut object = object;
        let data = object.remove("data").unwrap_or_default();
        let text = |key: &str, v: Option<&Value>| match v {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(invalid(format!(
                "`{key}` must be a string, got {}",
                kind(other)
            ))),
        };
        let template_id = text("template_id", object.get("template_id"))?;
        let output_format = text("output_format", object.get("output_format"))?;
        let priority = match object.get("priority") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_i64()
                    .and_then(|p| i32::try_from(p).ok())
                    .ok_or_else(|| invalid(format!("`priority` must be an integer, got {v}")))?,
            ),
        };
        (data, template_id, output_format, priority)
    } else {
        (Value::Object(object), None, None, None)
    };
    let template_id = template_id
        .or_else(|| defaults.template_id.clone())
        .ok_or_else(|| {
            invalid("no template: give --template or a `template_id` on the line".into())
        })?;
    let output_format = output_format
        .or_else(|| defaults.output_format.clone())
        .ok_or_else(|| {
            invalid("no format: give --format or an `output_format` on the line".into())
        })?;
    Ok(Row {
        line,
        template_id,
        output_format,
        priority: priority.or(defaults.priority),
        data,
    })
}

/// `{"data": {...}}` with only task keys beside it.
fn is_task_object(object: &Map<String, Value>) -> bool {
    matches!(object.get("data"), Some(Value::Object(_)))
        && object
            .keys()
            .all(|k| k == "data" || TASK_KEYS.contains(&k.as_str()))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Rows that go in one batch request: same template, format and priority.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub template_id: String,
    pub output_format: String,
    pub priority: Option<i32>,
    /// Indexes into the rows, in input order.
    pub rows: Vec<usize>,
}

/// Group rows by (template, format, priority), in order of first
/// appearance, and split each group into requests of at most `max_rows`
/// rows and about `max_bytes` bytes of data (a larger row goes alone).
pub fn chunks(rows: &[Row], max_rows: usize, max_bytes: usize) -> Vec<Chunk> {
    let max_rows = max_rows.max(1);
    let mut groups: Vec<(Chunk, Vec<usize>)> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let found = groups.iter_mut().find(|(c, _)| {
            c.template_id == row.template_id
                && c.output_format == row.output_format
                && c.priority == row.priority
        });
        match found {
            Some((_, members)) => members.push(i),
            None => groups.push((
                Chunk {
                    template_id: row.template_id.clone(),
                    output_format: row.output_format.clone(),
                    priority: row.priority,
                    rows: Vec::new(),
                },
                vec![i],
            )),
        }
    }
    let mut out = Vec::new();
    for (head, members) in groups {
        let mut current = Vec::new();
        let mut bytes = 0usize;
        for i in members {
            let size = rows[i].data.to_string().len();
            if !current.is_empty() && (current.len() >= max_rows || bytes + size > max_bytes) {
                out.push(Chunk {
                    rows: std::mem::take(&mut current),
                    ..head.clone()
                });
                bytes = 0;
            }
            current.push(i);
            bytes += size;
        }
        if !current.is_empty() {
            out.push(Chunk {
                rows: current,
                ..head
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defaults() -> Defaults {
        Defaults {
            template_id: Some("t".into()),
            output_format: Some("txt".into()),
            priority: None,
        }
    }

    #[test]
    fn data_lines_take_the_command_line_defaults() {
        let rows = parse_jsonl("{\"n\":1}\n\n{\"n\":2}\n", &defaults()).expect("rows");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].line, 3);
        assert_eq!(rows[1].template_id, "t");
        assert_eq!(rows[1].data, json!({"n": 2}));
    }

    #[test]
    fn task_objects_override_per_row() {
        let text = r#"{"template_id":"bad","priority":7,"data":{"n":1}}
{"data":{"template_id":"is data"}}
{"data":{"n":1},"other":1}"#;
        let rows = parse_jsonl(text, &defaults()).expect("rows");
        assert_eq!(rows[0].template_id, "bad");
        assert_eq!(rows[0].output_format, "txt");
        assert_eq!(rows[0].priority, Some(7));
        assert_eq!(rows[0].data, json!({"n": 1}));
        // Wrapped data that looks like a task object stays data.
        assert_eq!(rows[1].data, json!({"template_id": "is data"}));
        // Another key beside `data`: the whole line is the data.
        assert_eq!(rows[2].data, json!({"data": {"n": 1}, "other": 1}));
    }

    #[test]
    fn bad_lines_are_named() {
        let err = parse_jsonl("{\"n\":1}\n{oops\n", &defaults()).expect_err("bad json");
        assert!(err.to_string().starts_with("line 2:"), "{err}");
        let err = parse_jsonl("[1]\n", &defaults()).expect_err("array");
        assert!(err.to_string().contains("an array"), "{err}");
        let err = parse_jsonl("{\"n\":1}\n", &Defaults::default()).expect_err("no template");
        assert!(err.to_string().contains("--template"), "{err}");
        let err = parse_jsonl("{\"priority\":\"high\",\"data\":{}}\n", &defaults())
            .expect_err("bad priority");
        assert!(err.to_string().contains("`priority`"), "{err}");
    }

    #[test]
    fn chunks_group_by_template_and_respect_the_limits() {
        let mut text = String::new();
        for n in 0..25 {
            if n % 5 == 0 {
                text.push_str(&format!(
                    "{{\"template_id\":\"b\",\"data\":{{\"n\":{n}}}}}\n"
                ));
            } else {
                text.push_str(&format!("{{\"n\":{n}}}\n"));
            }
        }
        let rows = parse_jsonl(&text, &defaults()).expect("rows");
        let c = chunks(&rows, 8, MAX_CHUNK_BYTES);
        let sizes: Vec<usize> = c.iter().map(|c| c.rows.len()).collect();
        // Groups in order of first appearance: row 0 is a `b` row.
        assert_eq!(sizes, vec![5, 8, 8, 4]);
        assert_eq!(c[0].template_id, "b");
        assert_eq!(c[0].rows, vec![0, 5, 10, 15, 20]);
        assert_eq!(c[1].template_id, "t");
        assert_eq!(c[1].rows[..3], [1, 2, 3]);
        // Every row exactly once.
        let mut all: Vec<usize> = c.iter().flat_map(|c| c.rows.clone()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..25).collect::<Vec<_>>());
        // A byte budget splits too; a row larger than it goes alone.
        let c = chunks(&rows[1..5], 1000, 16);
        assert_eq!(c.len(), 2, "{c:?}");
        let c = chunks(&rows[1..3], 1000, 1);
        assert_eq!(c.len(), 2);
    }
}
