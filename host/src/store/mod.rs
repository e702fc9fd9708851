//! What the service remembers about tasks: status records in SQLite
//! (`tasks.db`, in the data directory) and result files under
//! `results/<tenant>/` (in the shared directory, which is the data
//! directory unless split roles need another). Templates live in
//! [`templates`]. Status changes arrive as [`TaskEvent`]s
//! ([`TaskStore::apply`]).

pub mod templates;

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::SyncMode;
use crate::db::{Db, DbError};
use crate::ids::{TaskId, TenantId};
use crate::status::{EventKind, TaskEvent};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("result file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Dead,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Dead => "dead",
        }
    }
    fn parse(s: &str) -> TaskStatus {
        match s {
            "running" => TaskStatus::Running,
            "succeeded" => TaskStatus::Succeeded,
            "failed" => TaskStatus::Failed,
            "dead" => TaskStatus::Dead,
            _ => TaskStatus::Queued,
        }
    }
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Dead
        )
    }
}

/// A new task as accepted by the API.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub task_id: TaskId,
    pub tenant: TenantId,
    pub template_id: String,
    pub output_format: String,
    pub priority: i32,
    pub created_at: DateTime<Utc>,
    /// The queue message ([`crate::queue::TaskMessage::to_bytes`]), kept
    /// for [`crate::reconcile`].
    pub message: Vec<u8>,
}

impl NewTask {
    /// The record of a task accepted with this message.
    pub fn of(m: &crate::queue::TaskMessage) -> NewTask {
        NewTask {
            task_id: m.task_id.clone(),
            tenant: m.tenant.clone(),
            template_id: m.template_id.to_string(),
            output_format: m.output_format.clone(),
            priority: m.priority,
            created_at: m.created_at,
            message: m.to_bytes(),
        }
    }
}

/// An open task whose last progress is older than the cutoff asked for
/// ([`TaskStore::stalled`]).
#[derive(Debug, Clone)]
pub struct StalledTask {
    pub task_id: String,
    pub status: TaskStatus,
    /// Attempts used in the current round.
    pub attempts: u32,
    pub round: u32,
    /// When the store last saw the task move (accepted, started, retried).
    pub touched_at: DateTime<Utc>,
    /// Its message as accepted (round 0).
    pub message: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct TaskError {
    /// Fault class, e.g. `timeout`, `bad_template`, `trap`.
    pub class: String,
    pub message: String,
    /// Whether the service will try again.
    pub retryable: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ResultMeta {
    pub size: u64,
    pub media_type: String,
    pub extension: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskRecord {
    pub task_id: String,
    #[serde(skip)]
    pub tenant: String,
    pub template_id: String,
    pub output_format: String,
    pub priority: i32,
    pub status: TaskStatus,
    /// Deliveries in the current round (since the last replay).
    pub attempts: u32,
    /// Times the task was replayed from the dead-letter queue.
    pub replays: u32,
    pub error: Option<TaskError>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub result: Option<ResultMeta>,
    /// When retention deleted the result file.
    pub result_expired_at: Option<DateTime<Utc>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tasks (
    task_id       TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    template_id   TEXT NOT NULL,
    output_format TEXT NOT NULL,
    priority      INTEGER NOT NULL,
    status        TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    error_class   TEXT,
    error_message TEXT,
    retryable     INTEGER,
    created_at    INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER,
    result_size   INTEGER,
    media_type    TEXT,
    extension     TEXT,
    round         INTEGER NOT NULL DEFAULT 0,
    touched_at    INTEGER               -- last progress seen (ms); NULL = created_at
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tasks_status ON tasks (status);
CREATE INDEX IF NOT EXISTS tasks_tenant_status ON tasks (tenant, status);
-- The message of each task accepted by this process (not of tasks known
-- from other API processes' announcements), kept until the task succeeds
-- or fails, so that a task whose message was lost can be published again
-- (crate::reconcile).
CREATE TABLE IF NOT EXISTS task_messages (
    task_id TEXT PRIMARY KEY,
    body    BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS result_blobs (
    task_id TEXT PRIMARY KEY,
    bytes   BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS expired (
    task_id TEXT PRIMARY KEY,
    at      INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    tenant     TEXT NOT NULL,
    key        TEXT NOT NULL,
    request    TEXT NOT NULL,
    task_ids   TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, key)
) WITHOUT ROWID;
";

/// What an `Idempotency-Key` found (see [`TaskStore::idempotency_begin`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Idempotency {
    /// First use of the key: go on, then commit or abort.
    Reserved,
    /// The same request was accepted before with these tasks.
    Replay(Vec<String>),
    /// The same request is being handled right now.
    InProgress,
    /// The key was used for a different request.
    Mismatch,
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: Option<i64>) -> Option<DateTime<Utc>> {
    v.and_then(|v| Utc.timestamp_millis_opt(v).single())
}

#[derive(Clone)]
pub struct TaskStore {
    db: Db,
    results: PathBuf,
    /// fsync result files before recording success (`sync: full`); with
    /// `normal` a killed process still loses nothing (the page cache
    /// survives it), only a power loss could.
    fsync: bool,
    /// Results up to this size go into `tasks.db` (`result_blobs`).
    inline_max: u64,
}

/// A stored result, to send.
pub enum StoredResult {
    Inline(Vec<u8>),
    File(tokio::fs::File),
}

impl TaskStore {
    /// Open `tasks.db` in `data_dir`; result files go under
    /// `shared_dir/results`.
    pub fn open(
        data_dir: &Path,
        shared_dir: &Path,
        sync: SyncMode,
    ) -> Result<TaskStore, StoreError> {
        let results = shared_dir.join("results");
        std::fs::create_dir_all(&results).map_err(|source| StoreError::Io {
            path: results.clone(),
            source,
        })?;
        // Temporary files left by a process killed during a result write.
        {
            let results = results.clone();
            let _ = std::thread::Builder::new()
                .name("result-tmp-sweep".into())
                .spawn(move || sweep_temp_files(&results, TEMP_FILE_AGE));
        }
        let path = data_dir.join("tasks.db");
        add_missing_columns(
            &path,
            "tasks",
            &[
                ("round", "INTEGER NOT NULL DEFAULT 0"),
                ("touched_at", "INTEGER"),
            ],
        )?;
        Ok(TaskStore {
            db: Db::open(&path, sync, SCHEMA)?,
            results,
            fsync: sync == SyncMode::Full,
            inline_max: 0,
        })
    }

    /// Keep results up to `max` bytes in `tasks.db` (0 = files only).
    pub fn with_inline_results(mut self, max: u64) -> TaskStore {
        self.inline_max = max;
        self
    }

    pub async fn insert(&self, tasks: Vec<NewTask>) -> Result<(), StoreError> {
        self.db
            .write(move |c| {
                let mut stmt = c.prepare_cached(
                    "INSERT INTO tasks (task_id, tenant, template_id, output_format, priority, status, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6)",
                )?;
                let mut body =
                    c.prepare_cached("INSERT INTO task_messages (task_id, body) VALUES (?1, ?2)")?;
                for t in &tasks {
                    stmt.execute(params![
                        t.task_id.as_str(),
                        t.tenant.as_str(),
                        t.template_id,
                        t.output_format,
                        t.priority,
                        ms(t.created_at)
                    ])?;
                    body.execute(params![t.task_id.as_str(), t.message])?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Forget tasks whose message never reached the queue.
    pub async fn remove(&self, ids: Vec<TaskId>) -> Result<(), StoreError> {
        self.db
            .write(move |c| {
                for id in &ids {
                    c.execute("DELETE FROM tasks WHERE task_id = ?1", [id.as_str()])?;
                    c.execute(
                        "DELETE FROM task_messages WHERE task_id = ?1",
                        [id.as_str()],
                    )?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// What a delivery of replay round `round` finds: the status the task
    /// has (`queued` when the delivery opens a later round than the stored
    /// one, which resets the task) and the renders begun in that round (see
    /// [`Self::render_began`]; the queue's delivery count can be higher:
    /// deliveries that never reached a render, the process killed while
    /// they waited for a slot, are not attempts). `None` if the task is
    /// unknown. A read, except when a round begins.
    pub async fn start(
        &self,
        id: &TaskId,
        round: u32,
    ) -> Result<Option<(TaskStatus, u32)>, StoreError> {
        let id = id.to_string();
        let read = {
            let id = id.clone();
            self.db
                .read(move |c| {
                    c.query_row(
                        "SELECT status, round, attempts FROM tasks WHERE task_id = ?1",
                        [&id],
                        |r| {
                            Ok((
                                r.get::<_, String>(0)?,
                                r.get::<_, u32>(1)?,
                                r.get::<_, u32>(2)?,
                            ))
                        },
                    )
                    .optional()
                })
                .await?
        };
        let Some((status, stored_round, attempts)) = read else {
            return Ok(None);
        };
        if round < stored_round {
            // A delivery of a round that was replayed since.
            return Ok(Some((TaskStatus::Dead, attempts)));
        }
        if round == stored_round {
            return Ok(Some((TaskStatus::parse(&status), attempts)));
        }
        Ok(self
            .db
            .write_background(move |c| {
                let stored: u32 =
                    c.query_row("SELECT round FROM tasks WHERE task_id = ?1", [&id], |r| {
                        r.get(0)
                    })?;
                if stored < round {
                    new_round(c, &id, round)?;
                }
                Ok(Some((TaskStatus::Queued, 0)))
            })
            .await?)
    }

    /// Attempt `attempt` of round `round` begins to render: the task is
    /// `running` and has used that attempt (unless it ended meanwhile).
    pub async fn render_began(
        &self,
        id: &TaskId,
        round: u32,
        attempt: u32,
    ) -> Result<(), StoreError> {
        let id = id.to_string();
        self.db
            .write_background(move |c| {
                c.prepare_cached(
                    "UPDATE tasks SET status = 'running', attempts = max(attempts, ?3), started_at = ?4, touched_at = ?4
                     WHERE task_id = ?1 AND round = ?2 AND status NOT IN ('succeeded', 'failed', 'dead')",
                )?
                .execute(params![id, round, attempt, ms(Utc::now())])?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Store a result: up to `inline_max` bytes as a row of `tasks.db`,
    /// else a file (written atomically; fsynced with `sync: full`) where
    /// [`Self::result_path`] finds it. Rendering the same task twice writes
    /// the same row or path, so a duplicate delivery leaves one result.
    pub async fn write_result(
        &self,
        tenant: &TenantId,
        id: &TaskId,
        bytes: Vec<u8>,
        media_type: String,
        extension: String,
    ) -> Result<ResultMeta, StoreError> {
        let size = bytes.len() as u64;
        if size <= self.inline_max {
            let id = id.to_string();
            self.db
                .write_background(move |c| {
                    c.prepare_cached(
                        "INSERT OR REPLACE INTO result_blobs (task_id, bytes) VALUES (?1, ?2)",
                    )?
                    .execute(params![id, bytes])?;
                    Ok(())
                })
                .await?;
            return Ok(ResultMeta {
                size,
                media_type,
                extension,
            });
        }
        let path = self.result_path(tenant, id, &extension);
        let write_path = path.clone();
        let fsync = self.fsync;
        tokio::task::spawn_blocking(move || write_file(&write_path, &bytes, fsync))
            .await
            .map_err(|e| StoreError::Io {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| StoreError::Io { path, source })?;
        Ok(ResultMeta {
            size,
            media_type,
            extension,
        })
    }

    /// Apply status events in one transaction. A task unknown here is
    /// created from the event's header. An event changes a task only if it
    /// moves it forward (see [`TaskEvent::rank`]) and never replaces a
    /// final status, so duplicates and reordering are harmless.
    pub async fn apply(&self, events: Vec<TaskEvent>) -> Result<(), StoreError> {
        self.db
            .write_background(move |c| {
                for e in &events {
                    apply_one(c, e)?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    pub async fn get(
        &self,
        tenant: &TenantId,
        id: &TaskId,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        Ok(self
            .db
            .read(move |c| {
                c.query_row(
                    "SELECT task_id, tenant, template_id, output_format, priority, status, attempts, error_class,
                            error_message, retryable, created_at, started_at, finished_at, result_size, media_type, extension,
                            (SELECT at FROM expired e WHERE e.task_id = tasks.task_id)
                            , round
                     FROM tasks WHERE task_id = ?1 AND tenant = ?2",
                    [&id, &tenant],
                    |r| {
                        let status = TaskStatus::parse(&r.get::<_, String>(5)?);
                        let error = match r.get::<_, Option<String>>(7)? {
                            Some(class) => Some(TaskError {
                                class,
                                message: r.get::<_, Option<String>>(8)?.unwrap_or_default(),
                                retryable: r.get::<_, Option<bool>>(9)?.unwrap_or(false),
                            }),
                            None => None,
                        };
                        let result = match (status, r.get::<_, Option<i64>>(13)?) {
                            (TaskStatus::Succeeded, Some(size)) => Some(ResultMeta {
                                size: size as u64,
                                media_type: r.get::<_, Option<String>>(14)?.unwrap_or_default(),
                                extension: r.get::<_, Option<String>>(15)?.unwrap_or_default(),
                            }),
                            _ => None,
                        };
                        Ok(TaskRecord {
                            task_id: r.get(0)?,
                            tenant: r.get(1)?,
                            template_id: r.get(2)?,
                            output_format: r.get(3)?,
                            priority: r.get(4)?,
                            status,
                            attempts: r.get(6)?,
                            replays: r.get(17)?,
                            error,
                            created_at: from_ms(r.get(10)?).unwrap_or_default(),
                            started_at: from_ms(r.get(11)?),
                            finished_at: from_ms(r.get(12)?),
                            result,
                            result_expired_at: from_ms(r.get(16)?),
                        })
                    },
                )
                .optional()
            })
            .await?)
    }

    /// The tenant of a task, whoever it belongs to (for admin endpoints).
    pub async fn tenant_of(&self, id: &TaskId) -> Result<Option<String>, StoreError> {
        let id = id.to_string();
        Ok(self
            .db
            .read(move |c| {
                c.query_row("SELECT tenant FROM tasks WHERE task_id = ?1", [&id], |r| {
                    r.get(0)
                })
                .optional()
            })
            .await?)
    }

    /// Tasks queued or running, of one tenant or of all.
    pub async fn count_open(&self, tenant: Option<&TenantId>) -> Result<u64, StoreError> {
        let tenant = tenant.map(|t| t.to_string());
        Ok(self
            .db
            .read(move |c| match &tenant {
                Some(t) => c
                    .prepare_cached(
                        "SELECT count(*) FROM tasks WHERE tenant = ?1 AND status IN ('queued', 'running')",
                    )?
                    .query_row([t], |r| r.get::<_, i64>(0)),
                None => c
                    .prepare_cached(
                        "SELECT count(*) FROM tasks WHERE status IN ('queued', 'running')",
                    )?
                    .query_row([], |r| r.get::<_, i64>(0)),
            })
            .await? as u64)
    }

    /// Claim an `Idempotency-Key` for a request (`request` identifies it:
    /// a hash of the endpoint and body). Keys older than `window` are
    /// forgotten first, and so are reservations still in progress after
    /// `in_progress_for` (their request can no longer be running: the
    /// process died, or the request was dropped, between claim and commit).
    pub async fn idempotency_begin(
        &self,
        tenant: &TenantId,
        key: &str,
        request: &str,
        window: chrono::Duration,
        in_progress_for: chrono::Duration,
    ) -> Result<Idempotency, StoreError> {
        let (tenant, key, request) = (tenant.to_string(), key.to_string(), request.to_string());
        Ok(self
            .db
            .write(move |c| {
                let now = Utc::now();
                c.execute(
                    "DELETE FROM idempotency WHERE tenant = ?1 AND key = ?2 \
                     AND (created_at < ?3 OR (task_ids IS NULL AND created_at < ?4))",
                    params![tenant, key, ms(now - window), ms(now - in_progress_for)],
                )?;
                let found: Option<(String, Option<String>)> = c
                    .query_row(
                        "SELECT request, task_ids FROM idempotency WHERE tenant = ?1 AND key = ?2",
                        params![tenant, key],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                Ok(match found {
                    None => {
                        c.execute(
                            "INSERT INTO idempotency (tenant, key, request, created_at) VALUES (?1, ?2, ?3, ?4)",
                            params![tenant, key, request, ms(now)],
                        )?;
                        Idempotency::Reserved
                    }
                    Some((r, _)) if r != request => Idempotency::Mismatch,
                    Some((_, None)) => Idempotency::InProgress,
                    Some((_, Some(ids))) => Idempotency::Replay(
                        serde_json::from_str(&ids).unwrap_or_default(),
                    ),
                })
            })
            .await?)
    }

    /// Record the tasks a reserved key's request created.
    pub async fn idempotency_commit(
        &self,
        tenant: &TenantId,
        key: &str,
        task_ids: &[String],
    ) -> Result<(), StoreError> {
        let (tenant, key) = (tenant.to_string(), key.to_string());
        let ids = serde_json::to_string(task_ids).unwrap_or_default();
        self.db
            .write(move |c| {
                c.execute(
                    "UPDATE idempotency SET task_ids = ?3 WHERE tenant = ?1 AND key = ?2",
                    params![tenant, key, ids],
                )
            })
            .await?;
        Ok(())
    }

    /// Release a reserved key whose request was not accepted.
    pub async fn idempotency_abort(&self, tenant: &TenantId, key: &str) -> Result<(), StoreError> {
        let (tenant, key) = (tenant.to_string(), key.to_string());
        self.db
            .write(move |c| {
                c.execute(
                    "DELETE FROM idempotency WHERE tenant = ?1 AND key = ?2 AND task_ids IS NULL",
                    params![tenant, key],
                )
            })
            .await?;
        Ok(())
    }

    /// Retention: delete the result files of tasks that succeeded before
    /// `cutoff` (at most `limit` per call) and remember when. Returns how
    /// many were expired.
    pub async fn expire_results(
        &self,
        cutoff: DateTime<Utc>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let due: Vec<(String, String, String)> = self
            .db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT task_id, tenant, extension FROM tasks
                     WHERE status = 'succeeded' AND finished_at < ?1
                       AND NOT EXISTS (SELECT 1 FROM expired e WHERE e.task_id = tasks.task_id)
                     LIMIT ?2",
                )?;
                stmt.query_map(params![ms(cutoff), limit as i64], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                    ))
                })?
                .collect()
            })
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        let results = self.results.clone();
        let done = due.clone();
        tokio::task::spawn_blocking(move || {
            for (id, tenant, ext) in &done {
                let path = results.join(tenant).join(format!("{id}.{ext}"));
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(StoreError::Io { path, source }),
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Io {
            path: self.results.clone(),
            source: std::io::Error::other(e),
        })??;
        let n = due.len();
        self.db
            .write_background(move |c| {
                let now = ms(Utc::now());
                let mut stmt = c.prepare_cached(
                    "INSERT OR IGNORE INTO expired (task_id, at) VALUES (?1, ?2)",
                )?;
                let mut blob = c.prepare_cached("DELETE FROM result_blobs WHERE task_id = ?1")?;
                for (id, _, _) in &due {
                    stmt.execute(params![id, now])?;
                    blob.execute([id])?;
                }
                Ok(())
            })
            .await?;
        Ok(n)
    }

    /// Open tasks (queued or running) accepted by this store, whose last
    /// progress is older than `cutoff`, least recently touched first (at
    /// most `limit`).
    pub async fn stalled(
        &self,
        cutoff: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<StalledTask>, StoreError> {
        Ok(self
            .db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT t.task_id, t.status, t.attempts, t.round, coalesce(t.touched_at, t.created_at), m.body
                     FROM tasks t JOIN task_messages m ON m.task_id = t.task_id
                     WHERE t.status IN ('queued', 'running') AND coalesce(t.touched_at, t.created_at) < ?1
                     ORDER BY coalesce(t.touched_at, t.created_at) LIMIT ?2",
                )?;
                stmt.query_map(params![ms(cutoff), limit as i64], |r| {
                    Ok(StalledTask {
                        task_id: r.get(0)?,
                        status: TaskStatus::parse(&r.get::<_, String>(1)?),
                        attempts: r.get(2)?,
                        round: r.get(3)?,
                        touched_at: from_ms(r.get(4)?).unwrap_or_default(),
                        message: r.get(5)?,
                    })
                })?
                .collect()
            })
            .await?)
    }

    /// Count these tasks as moving now (their message was published again),
    /// unless they moved since `seen` (their `touched_at` then).
    pub async fn touch(&self, tasks: Vec<(String, DateTime<Utc>)>) -> Result<(), StoreError> {
        self.db
            .write_background(move |c| {
                let now = ms(Utc::now());
                let mut stmt = c.prepare_cached(
                    "UPDATE tasks SET touched_at = ?2
                     WHERE task_id = ?1 AND coalesce(touched_at, created_at) <= ?3",
                )?;
                for (id, seen) in &tasks {
                    stmt.execute(params![id, now, ms(*seen)])?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Number of tasks in each status.
    pub async fn counts(&self) -> Result<Vec<(TaskStatus, u64)>, StoreError> {
        Ok(self
            .db
            .read(|c| {
                let mut stmt =
                    c.prepare_cached("SELECT status, count(*) FROM tasks GROUP BY status")?;
                stmt.query_map([], |r| {
                    Ok((
                        TaskStatus::parse(&r.get::<_, String>(0)?),
                        r.get::<_, i64>(1)? as u64,
                    ))
                })?
                .collect()
            })
            .await?)
    }

    /// The stored result of a task: its row in `tasks.db`, else its file.
    pub async fn open_result(
        &self,
        tenant: &TenantId,
        id: &TaskId,
        extension: &str,
    ) -> Result<StoredResult, StoreError> {
        let key = id.to_string();
        let inline: Option<Vec<u8>> = self
            .db
            .read(move |c| {
                c.prepare_cached("SELECT bytes FROM result_blobs WHERE task_id = ?1")?
                    .query_row([&key], |r| r.get(0))
                    .optional()
            })
            .await?;
        if let Some(bytes) = inline {
            return Ok(StoredResult::Inline(bytes));
        }
        let path = self.result_path(tenant, id, extension);
        match tokio::fs::File::open(&path).await {
            Ok(f) => Ok(StoredResult::File(f)),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    pub fn result_path(&self, tenant: &TenantId, id: &TaskId, extension: &str) -> PathBuf {
        // Ids are validated types and the extension is the format's, checked
        // at load (`plugin::format`: `[a-z0-9]{1,16}`); one that is not
        // ASCII letters and digits anyway (the rule before that) never
        // becomes part of a path, so this stays a file directly inside
        // `results/<tenant>/`.
        let plain = !extension.is_empty() && extension.bytes().all(|b| b.is_ascii_alphanumeric());
        let extension = if plain { extension } else { "invalid" };
        self.results
            .join(tenant.as_str())
            .join(format!("{id}.{extension}"))
    }
}

fn apply_one(c: &rusqlite::Connection, e: &TaskEvent) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT OR IGNORE INTO tasks (task_id, tenant, template_id, output_format, priority, status, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6)",
    )?
    .execute(params![
        e.task_id,
        e.tenant,
        e.template_id,
        e.output_format,
        e.priority,
        ms(e.created_at)
    ])?;
    let (status, attempts, failed, round): (String, u32, bool, u32) = c
        .prepare_cached(
            "SELECT status, attempts, error_class IS NOT NULL, round FROM tasks WHERE task_id = ?1",
        )?
        .query_row([&e.task_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
    let mut status = TaskStatus::parse(&status);
    let (mut attempts, mut failed) = (attempts, failed);
    if e.round < round {
        return Ok(());
    }
    if e.round > round {
        // A replay: the task starts afresh in the new round.
        new_round(c, &e.task_id, e.round)?;
        (status, attempts, failed) = (TaskStatus::Queued, 0, false);
    }
    let stored_rank = match status {
        _ if status.is_final() => return Ok(()),
        TaskStatus::Running => 1,
        _ if failed => 2,
        _ => 0,
    };
    if e.rank() <= (round.max(e.round), attempts, stored_rank) {
        return Ok(());
    }
    let at = ms(e.at);
    // Progress is timed by this store's clock, not the sender's.
    let now = ms(Utc::now());
    match &e.kind {
        EventKind::Accepted => {}
        EventKind::Started => {
            c.prepare_cached("UPDATE tasks SET status = 'running', attempts = ?2, started_at = ?3, touched_at = ?4 WHERE task_id = ?1")?
                .execute(params![e.task_id, e.attempt, at, now])?;
        }
        EventKind::Succeeded { result } => {
            c.prepare_cached(
                "UPDATE tasks SET status = 'succeeded', attempts = max(attempts, ?2), finished_at = ?3, result_size = ?4,
                 media_type = ?5, extension = ?6, error_class = NULL, error_message = NULL, retryable = NULL,
                 touched_at = ?7
                 WHERE task_id = ?1",
            )?
            .execute(params![
                e.task_id,
                e.attempt,
                at,
                result.size as i64,
                result.media_type,
                result.extension,
                now
            ])?;
            forget_message(c, &e.task_id)?;
        }
        EventKind::Failed { status, error } => {
            let finished = status.is_final().then_some(at);
            c.prepare_cached(
                "UPDATE tasks SET status = ?2, attempts = max(attempts, ?3), error_class = ?4, error_message = ?5,
                 retryable = ?6, finished_at = ?7, touched_at = ?8 WHERE task_id = ?1",
            )?
            .execute(params![
                e.task_id,
                status.as_str(),
                e.attempt,
                error.class,
                error.message,
                error.retryable,
                finished,
                now
            ])?;
            // A dead task keeps its message: a replay may need it again.
            if *status == TaskStatus::Failed {
                forget_message(c, &e.task_id)?;
            }
        }
    }
    Ok(())
}

/// A task that ended for good needs its message no more.
fn forget_message(c: &rusqlite::Connection, id: &str) -> rusqlite::Result<()> {
    c.prepare_cached("DELETE FROM task_messages WHERE task_id = ?1")?
        .execute([id])?;
    Ok(())
}

/// Schema upgrade of an existing database file: add the columns of
/// `table` that a file written by an older version lacks (a new file gets
/// them from its `CREATE TABLE`). Runs before [`Db::open`], whose schema
/// may index the new columns.
pub(crate) fn add_missing_columns(
    path: &Path,
    table: &str,
    columns: &[(&str, &str)],
) -> Result<(), DbError> {
    if !path.exists() {
        return Ok(());
    }
    let c = rusqlite::Connection::open(path)?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    let have: Vec<String> = c
        .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if have.is_empty() {
        return Ok(()); // no such table yet
    }
    for (name, decl) in columns {
        if !have.iter().any(|h| h == name) {
            c.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {name} {decl}"))?;
        }
    }
    Ok(())
}

/// Reset a task for replay round `round`: queued, no attempts, no error,
/// no result.
fn new_round(c: &rusqlite::Connection, id: &str, round: u32) -> rusqlite::Result<()> {
    c.prepare_cached(
        "UPDATE tasks SET round = ?2, status = 'queued', attempts = 0, error_class = NULL, error_message = NULL,
         retryable = NULL, started_at = NULL, finished_at = NULL, result_size = NULL, media_type = NULL,
         extension = NULL, touched_at = ?3 WHERE task_id = ?1",
    )?
    .execute(params![id, round, ms(Utc::now())])?;
    // The last round's result, if it is kept inline, goes with it.
    c.prepare_cached("DELETE FROM result_blobs WHERE task_id = ?1")?
        .execute([id])?;
    Ok(())
}

/// Write to a temporary file, fsync, rename over `path`.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_file(path, bytes, true)
}

/// Write to a temporary file, optionally fsync, rename over `path`.
/// A temporary result file older than this is a leftover (a write takes
/// milliseconds; other processes sharing `shared_dir` may be writing).
const TEMP_FILE_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// Delete the temporary files (`<task>.tmp-<uuid>`, see [`write_file`])
/// older than `age` under `results/<tenant>/`; returns how many.
fn sweep_temp_files(results: &Path, age: std::time::Duration) -> usize {
    let mut removed = 0;
    let Ok(tenants) = std::fs::read_dir(results) else {
        return 0;
    };
    for tenant in tenants.flatten() {
        let Ok(files) = std::fs::read_dir(tenant.path()) else {
            continue;
        };
        for f in files.flatten() {
            let stale = f.file_name().to_string_lossy().contains(".tmp-")
                && f.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|e| e >= age));
            if stale && std::fs::remove_file(f.path()).is_ok() {
                removed += 1;
            }
        }
    }
    if removed > 0 {
        tracing::info!(
            removed,
            "removed temporary result files left by a killed process"
        );
    }
    removed
}

fn write_file(path: &Path, bytes: &[u8], fsync: bool) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    if fsync {
        f.sync_all()?;
    }
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(store: &TaskStore, id: &TaskId) -> (bool, Vec<u8>) {
        match store
            .open_result(&TenantId::default_tenant(), id, "txt")
            .await
            .unwrap()
        {
            StoredResult::Inline(b) => (true, b),
            StoredResult::File(mut f) => {
                use tokio::io::AsyncReadExt;
                let mut b = Vec::new();
                f.read_to_end(&mut b).await.unwrap();
                (false, b)
            }
        }
    }

    fn new_task(id: &str) -> NewTask {
        NewTask {
            task_id: TaskId::parse(id).unwrap(),
            tenant: TenantId::default_tenant(),
            template_id: "tpl".into(),
            output_format: "txt".into(),
            priority: 0,
            created_at: Utc::now(),
            message: format!("body of {id}").into_bytes(),
        }
    }

    fn event(id: &str, attempt: u32, kind: EventKind) -> TaskEvent {
        TaskEvent {
            v: crate::status::EVENT_VERSION,
            task_id: id.into(),
            tenant: "default".into(),
            template_id: "tpl".into(),
            output_format: "txt".into(),
            priority: 0,
            created_at: Utc::now(),
            round: 0,
            attempt,
            at: Utc::now(),
            kind,
        }
    }

    /// Reconciliation's view: open tasks with their message, by last
    /// progress; progress moves a task out of the window, an end removes
    /// its message (but a dead task keeps it for a replay).
    #[tokio::test]
    async fn stalled_tasks_are_the_open_ones_idle_since_the_cutoff() {
        let dir = tempfile::tempdir().unwrap();
        let store = TaskStore::open(dir.path(), dir.path(), SyncMode::Normal).unwrap();
        store
            .insert(["a", "b", "c", "d"].map(new_task).to_vec())
            .await
            .unwrap();
        let ids = |v: Vec<StalledTask>| {
            let mut v: Vec<String> = v.into_iter().map(|t| t.task_id).collect();
            v.sort();
            v
        };
        let later = Utc::now() + chrono::Duration::seconds(1);
        let all = store.stalled(later, 10).await.unwrap();
        assert_eq!(ids(all.clone()), ["a", "b", "c", "d"]);
        assert_eq!(
            all[0].message,
            format!("body of {}", all[0].task_id).into_bytes()
        );
        // Nothing is idle since a time before it was accepted.
        let before = Utc::now() - chrono::Duration::seconds(60);
        assert!(store.stalled(before, 10).await.unwrap().is_empty());

        let result = ResultMeta {
            size: 1,
            media_type: "text/plain".into(),
            extension: "txt".into(),
        };
        let error = |status| EventKind::Failed {
            status,
            error: TaskError {
                class: "internal".into(),
                message: "x".into(),
                retryable: status == TaskStatus::Queued,
            },
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        let cutoff = Utc::now();
        std::thread::sleep(std::time::Duration::from_millis(20));
        store
            .apply(vec![
                event("a", 1, EventKind::Succeeded { result }),
                event("b", 1, error(TaskStatus::Failed)),
                event("c", 1, error(TaskStatus::Dead)),
                event("d", 1, error(TaskStatus::Queued)),
            ])
            .await
            .unwrap();
        // d moved after the cutoff; a, b and c are final.
        assert!(store.stalled(cutoff, 10).await.unwrap().is_empty());
        let d = store
            .stalled(Utc::now() + chrono::Duration::seconds(1), 10)
            .await
            .unwrap();
        assert_eq!(ids(d.clone()), ["d"]);
        assert_eq!((d[0].status, d[0].attempts), (TaskStatus::Queued, 1));
        let kept: Vec<String> = store
            .db
            .read(|c| {
                c.prepare("SELECT task_id FROM task_messages ORDER BY task_id")?
                    .query_map([], |r| r.get(0))?
                    .collect()
            })
            .await
            .unwrap();
        assert_eq!(
            kept,
            ["c", "d"],
            "succeeded and failed tasks drop their message"
        );

        // A touch counts as progress, unless the task moved since it was read.
        let seen = d[0].touched_at;
        std::thread::sleep(std::time::Duration::from_millis(10));
        store.touch(vec![("d".into(), seen)]).await.unwrap();
        let after = store
            .stalled(Utc::now() + chrono::Duration::seconds(1), 10)
            .await
            .unwrap();
        assert!(after[0].touched_at > seen);
        store
            .touch(vec![("d".into(), seen - chrono::Duration::seconds(5))])
            .await
            .unwrap();
        let again = store
            .stalled(Utc::now() + chrono::Duration::seconds(1), 10)
            .await
            .unwrap();
        assert_eq!(again[0].touched_at, after[0].touched_at);
    }

    #[test]
    fn only_stale_temporary_result_files_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let tenant = dir.path().join("acme");
        std::fs::create_dir_all(&tenant).unwrap();
        let stale = tenant.join("t1.tmp-0123");
        let fresh = tenant.join("t2.tmp-4567");
        let result = tenant.join("t3.txt");
        for p in [&stale, &fresh, &result] {
            std::fs::write(p, b"x").unwrap();
        }
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for p in [&stale, &result] {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        assert_eq!(sweep_temp_files(dir.path(), TEMP_FILE_AGE), 1);
        assert!(!stale.exists());
        assert!(fresh.exists() && result.exists());
    }

    #[tokio::test]
    async fn small_results_are_rows_larger_ones_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = TaskStore::open(dir.path(), dir.path(), SyncMode::Normal)
            .unwrap()
            .with_inline_results(4);
        let tenant = TenantId::default_tenant();
        let (small, large) = (
            TaskId::parse("small").unwrap(),
            TaskId::parse("large").unwrap(),
        );
        for (id, bytes) in [(&small, b"abcd".to_vec()), (&large, b"abcde".to_vec())] {
            // Twice, as a duplicate delivery does: one result stays.
            for _ in 0..2 {
                let meta = store
                    .write_result(
                        &tenant,
                        id,
                        bytes.clone(),
                        "text/plain".into(),
                        "txt".into(),
                    )
                    .await
                    .unwrap();
                assert_eq!(meta.size, bytes.len() as u64);
            }
        }
        assert_eq!(read(&store, &small).await, (true, b"abcd".to_vec()));
        assert!(!store.result_path(&tenant, &small, "txt").exists());
        assert_eq!(read(&store, &large).await, (false, b"abcde".to_vec()));
        // A new round (a replay) drops the old round's row.
        store
            .db
            .write_background(|c| new_round(c, "small", 1))
            .await
            .unwrap();
        assert!(store.open_result(&tenant, &small, "txt").await.is_err());
    }
}
