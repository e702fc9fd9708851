//! The outcome of a `submit` run: one [`TaskOutcome`] per row, the table
//! printed at the end (counts by state, failures grouped by reason) and
//! `summary.json` beside the downloaded files.

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::progress::human_duration;

/// Where a row ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Succeeded,
    Failed,
    Dead,
    /// The server refused to queue it (unknown template, bad data, ...).
    Rejected,
    /// Still queued or running when waiting stopped (`--timeout`).
    Unfinished,
    /// Queued; not waited for (no `--wait`).
    Queued,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Succeeded,
        State::Failed,
        State::Dead,
        State::Rejected,
        State::Unfinished,
        State::Queued,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Dead => "dead",
            State::Rejected => "rejected",
            State::Unfinished => "unfinished",
            State::Queued => "queued",
        }
    }

    /// From a final task status of the API.
    pub fn from_status(status: &str) -> Option<State> {
        match status {
            "succeeded" => Some(State::Succeeded),
            "failed" => Some(State::Failed),
            "dead" => Some(State::Dead),
            _ => None,
        }
    }
}

/// One row of the input and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskOutcome {
    /// Line in the input file (1 for `--data`).
    pub line: usize,
    pub task_id: Option<String>,
    pub template_id: String,
    pub output_format: String,
    pub state: State,
    pub attempts: u32,
    /// Why it did not succeed: `class: message` of the task's error, the
    /// server's refusal, or the last polling error.
    pub reason: Option<String>,
    /// The downloaded document, relative to the output directory.
    pub file: Option<String>,
    /// The document could not be downloaded (the task still succeeded).
    pub download_error: Option<String>,
}

/// Tasks of one state with the same reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasonGroup {
    pub state: State,
    pub reason: String,
    pub count: usize,
    /// The first row with this reason: (line, task id).
    pub example: (usize, Option<String>),
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub tasks: Vec<TaskOutcome>,
    #[serde(serialize_with = "as_millis", rename = "elapsed_ms")]
    pub elapsed: Duration,
    /// Output directory when results were downloaded.
    #[serde(skip)]
    pub out: Option<PathBuf>,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl Summary {
    pub fn count(&self, state: State) -> usize {
        self.tasks.iter().filter(|t| t.state == state).count()
    }

    pub fn downloaded(&self) -> usize {
        self.tasks.iter().filter(|t| t.file.is_some()).count()
    }

    pub fn download_errors(&self) -> usize {
        self.tasks
            .iter()
            .filter(|t| t.download_error.is_some())
            .count()
    }

    /// Nothing went wrong: no task failed, died, was refused or left
    /// unfinished, and every result asked for was downloaded.
    pub fn all_ok(&self) -> bool {
        self.tasks.iter().all(|t| {
            matches!(t.state, State::Succeeded | State::Queued) && t.download_error.is_none()
        })
    }

    /// How many rows did not end well (for the exit message).
    pub fn not_ok(&self) -> usize {
        self.tasks
            .iter()
            .filter(|t| {
                !matches!(t.state, State::Succeeded | State::Queued) || t.download_error.is_some()
            })
            .count()
    }

    /// Failures grouped by (state, reason), most frequent first.
    pub fn reasons(&self) -> Vec<ReasonGroup> {
        let mut groups: BTreeMap<(State, String), ReasonGroup> = BTreeMap::new();
        for t in &self.tasks {
            let (state, reason) = match (&t.state, &t.reason, &t.download_error) {
                (State::Succeeded | State::Queued, _, None) => continue,
                (State::Succeeded, _, Some(e)) => (t.state, format!("download failed: {e}")),
                (state, Some(r), _) => (*state, r.clone()),
                (state, None, _) => (*state, "(no reason given)".to_string()),
            };
            groups
                .entry((state, reason.clone()))
                .and_modify(|g| g.count += 1)
                .or_insert(ReasonGroup {
                    state,
                    reason,
                    count: 1,
                    example: (t.line, t.task_id.clone()),
                });
        }
        let mut v: Vec<ReasonGroup> = groups.into_values().collect();
        v.sort_by(|a, b| b.count.cmp(&a.count).then(a.state.cmp(&b.state)));
        v
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let total = self.tasks.len();
        let mut out = format!(
            "{total} task{} in {}\n",
            if total == 1 { "" } else { "s" },
            human_duration(self.elapsed)
        );
        out.push_str(&format!("  {:<11} {:>7}\n", "STATE", "TASKS"));
        for state in State::ALL {
            let n = self.count(state);
            // succeeded / failed / dead always; the others when they occur.
            if n > 0 || matches!(state, State::Succeeded | State::Failed | State::Dead) {
                out.push_str(&format!("  {:<11} {n:>7}\n", state.as_str()));
            }
        }
        let reasons = self.reasons();
        if !reasons.is_empty() {
            out.push_str("\nnot succeeded, by reason:\n");
            out.push_str(&format!("  {:>7}  {:<10}  REASON\n", "TASKS", "STATE"));
            for g in &reasons {
                out.push_str(&format!(
                    "  {:>7}  {:<10}  {}\n",
                    g.count,
                    g.state.as_str(),
                    one_line(&g.reason, 200)
                ));
                let (line, task) = &g.example;
                out.push_str(&format!(
                    "  {:>7}  {:<10}  e.g. line {line}{}\n",
                    "",
                    "",
                    task.as_ref()
                        .map(|t| format!(", task {t}"))
                        .unwrap_or_default()
                ));
            }
        }
        if let Some(dir) = &self.out {
            out.push_str(&format!(
                "\ndownloaded {} file{} to {} (details in {})\n",
                self.downloaded(),
                if self.downloaded() == 1 { "" } else { "s" },
                dir.display(),
                dir.join(SUMMARY_FILE).display()
            ));
        }
        out
    }

    /// Write `summary.json` into `dir`.
    pub fn write_json(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let path = dir.join(SUMMARY_FILE);
        let mut counts = BTreeMap::new();
        for state in State::ALL {
            counts.insert(state.as_str(), self.count(state));
        }
        let doc = serde_json::json!({
            "total": self.tasks.len(),
            "counts": counts,
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "tasks": self.tasks,
        });
        let text = serde_json::to_vec_pretty(&doc).map_err(std::io::Error::other)?;
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

/// File name of the run's details in the output directory.
pub const SUMMARY_FILE: &str = "summary.json";

/// First line of `s`, at most `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or_default();
    if line.chars().count() > max {
        let cut: String = line.chars().take(max).collect();
        format!("{cut}…")
    } else if s.contains('\n') {
        format!("{line} …")
    } else {
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(line: usize, state: State, reason: Option<&str>) -> TaskOutcome {
        TaskOutcome {
            line,
            task_id: Some(format!("t{line}")),
            template_id: "t".into(),
            output_format: "txt".into(),
            state,
            attempts: 1,
            reason: reason.map(str::to_string),
            file: None,
            download_error: None,
        }
    }

    #[test]
    fn failures_are_grouped_by_reason() {
        let s = Summary {
            tasks: vec![
                outcome(1, State::Succeeded, None),
                outcome(2, State::Failed, Some("bad_template: boom")),
                outcome(3, State::Failed, Some("bad_template: boom")),
                outcome(4, State::Dead, Some("internal: flaky")),
                outcome(5, State::Failed, Some("bad_data: x")),
            ],
            elapsed: Duration::from_millis(1500),
            out: None,
        };
        assert!(!s.all_ok());
        assert_eq!(s.not_ok(), 4);
        let r = s.reasons();
        assert_eq!(r[0].count, 2);
        assert_eq!(r[0].reason, "bad_template: boom");
        assert_eq!(r[0].example, (2, Some("t2".into())));
        assert_eq!(r.len(), 3);
        let table = s.table();
        assert!(table.starts_with("5 tasks in 1.5s\n"), "{table}");
        assert!(table.contains("  succeeded         1\n"), "{table}");
        assert!(table.contains("  failed            3\n"), "{table}");
        assert!(table.contains("  dead              1\n"), "{table}");
        assert!(!table.contains("rejected"), "{table}");
        assert!(
            table.contains("        2  failed      bad_template: boom\n"),
            "{table}"
        );
    }

    #[test]
    fn all_succeeded_is_ok() {
        let s = Summary {
            tasks: vec![outcome(1, State::Succeeded, None)],
            elapsed: Duration::ZERO,
            out: None,
        };
        assert!(s.all_ok());
        assert!(!s.table().contains("by reason"));
    }
}
