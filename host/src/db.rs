//! SQLite with one writer thread that group-commits.
//!
//! Every write is a closure run inside its own savepoint of a shared
//! transaction; the writer drains whatever is waiting (up to
//! [`MAX_GROUP`] jobs), commits once, and only then answers each caller. So
//! a write that returned `Ok` is on disk, and a burst of N writes costs one
//! fsync instead of N. Reads use a separate connection (WAL lets them run
//! beside the writer).
//!
//! Two lanes: [`Db::write`] for what a caller is waiting on (an API request),
//! [`Db::write_background`] for the worker's bookkeeping (leases, status,
//! acknowledgements). A group runs every waiting foreground job, and
//! background jobs only for [`BACKGROUND_BUDGET`] and only while no
//! foreground job is in it; a foreground job that arrives meanwhile joins
//! the group in progress, which then commits. So a submit waits for about
//! one background job and one fsync, however busy the worker is.

use rusqlite::{Connection, OpenFlags};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};

use crate::config::SyncMode;

const MAX_GROUP: usize = 1024;
/// Time a group spends on background jobs before it commits.
pub const BACKGROUND_BUDGET: std::time::Duration = std::time::Duration::from_millis(1);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database commit failed: {0}")]
    Commit(String),
    #[error("database writer has stopped")]
    Closed,
}

type Finish = Box<dyn FnOnce(Result<(), String>) + Send>;
type Job = Box<dyn FnOnce(&mut rusqlite::Transaction<'_>) -> Finish + Send>;

/// A job and whether someone waits on it in the foreground.
struct Queued {
    foreground: bool,
    job: Job,
}

#[derive(Clone)]
pub struct Db {
    jobs: mpsc::Sender<Queued>,
    reader: Arc<Mutex<Connection>>,
}

fn open_conn(path: &Path, sync: SyncMode) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        if sync == SyncMode::Full {
            "FULL"
        } else {
            "NORMAL"
        },
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

impl Db {
    /// Open (creating) the database at `path` and run `schema` once.
    pub fn open(path: &Path, sync: SyncMode, schema: &str) -> Result<Db, DbError> {
        let mut writer = open_conn(path, sync)?;
        writer.execute_batch(schema)?;
        let reader = open_conn(path, sync)?;
        let (tx, rx) = mpsc::channel::<Queued>();
        let name = format!(
            "db-writer:{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("?")
        );
        std::thread::Builder::new()
            .name(name)
            .spawn(move || writer_loop(&mut writer, rx))
            .map_err(|e| DbError::Commit(format!("cannot start writer thread: {e}")))?;
        Ok(Db {
            jobs: tx,
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    fn submit<T, F>(
        &self,
        foreground: bool,
        f: F,
    ) -> tokio::sync::oneshot::Receiver<Result<T, DbError>>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (done, wait) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |tx| {
            let outcome = match tx.savepoint() {
                Ok(mut sp) => {
                    let r = f(&sp);
                    if r.is_ok() {
                        if let Err(e) = sp.commit() {
                            Err(DbError::Sqlite(e))
                        } else {
                            r.map_err(DbError::Sqlite)
                        }
                    } else {
                        let _ = sp.rollback();
                        r.map_err(DbError::Sqlite)
                    }
                }
                Err(e) => Err(DbError::Sqlite(e)),
            };
            Box::new(move |commit: Result<(), String>| {
                let _ = done.send(match commit {
                    Ok(()) => outcome,
                    Err(e) => Err(DbError::Commit(e)),
                });
            })
        });
        // If the writer is gone the job (and its sender) is dropped here and
        // the caller sees `DbError::Closed`.
        let _ = self.jobs.send(Queued { foreground, job });
        wait
    }

    /// Run `f` in the writer; returns once its effects are committed.
    pub async fn write<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.submit(true, f).await.map_err(|_| DbError::Closed)?
    }

    /// [`Db::write`] in the background lane: as durable, but it yields to
    /// foreground writes (see the module docs).
    pub async fn write_background<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.submit(false, f).await.map_err(|_| DbError::Closed)?
    }

    /// Blocking variant of [`Db::write`] for threads outside the runtime.
    pub fn write_blocking<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.submit(true, f)
            .blocking_recv()
            .map_err(|_| DbError::Closed)?
    }

    /// Run a read-only query on the reader connection.
    pub async fn read<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn).map_err(DbError::Sqlite)
        })
        .await
        .map_err(|_| DbError::Closed)?
    }
}

fn writer_loop(conn: &mut Connection, rx: mpsc::Receiver<Queued>) {
    let mut foreground: VecDeque<Job> = VecDeque::new();
    let mut background: VecDeque<Job> = VecDeque::new();
    let take = |q: Queued, fg: &mut VecDeque<Job>, bg: &mut VecDeque<Job>| {
        if q.foreground {
            fg.push_back(q.job)
        } else {
            bg.push_back(q.job)
        }
    };
    loop {
        if foreground.is_empty() && background.is_empty() {
            match rx.recv() {
                Ok(q) => take(q, &mut foreground, &mut background),
                Err(_) => return,
            }
        }
        let mut tx = match conn.transaction() {
            Ok(tx) => tx,
            Err(e) => {
                // Dropping the jobs drops their answer channels: each caller
                // gets `DbError::Closed` and nothing was written.
                tracing::error!(error = %e, "cannot begin transaction");
                foreground.clear();
                background.clear();
                continue;
            }
        };
        let started = std::time::Instant::now();
        let mut finishes: Vec<Finish> = Vec::new();
        let mut waited_on = false;
        while finishes.len() < MAX_GROUP {
            while let Ok(q) = rx.try_recv() {
                take(q, &mut foreground, &mut background);
            }
            let job = match foreground.pop_front() {
                Some(job) => {
                    waited_on = true;
                    job
                }
                // Someone waits on this group: no more background work.
                None if waited_on => break,
                None if started.elapsed() < BACKGROUND_BUDGET => match background.pop_front() {
                    Some(job) => job,
                    None => break,
                },
                None => break,
            };
            finishes.push(job(&mut tx));
        }
        let commit = tx.commit().map_err(|e| e.to_string());
        if let Err(e) = &commit {
            tracing::error!(error = %e, "group commit failed");
        }
        for finish in finishes {
            finish(commit.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_are_visible_to_reads_and_failures_roll_back_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(
            &dir.path().join("t.db"),
            SyncMode::Normal,
            "CREATE TABLE t (x INTEGER UNIQUE);",
        )
        .expect("open");
        let mut waits = Vec::new();
        for x in [1, 2, 2, 3] {
            let db = db.clone();
            waits.push(tokio::spawn(async move {
                db.write(move |c| c.execute("INSERT INTO t VALUES (?1)", [x]))
                    .await
            }));
        }
        let mut failures = 0;
        for w in waits {
            if w.await.expect("join").is_err() {
                failures += 1;
            }
        }
        assert_eq!(failures, 1, "the duplicate insert fails on its own");
        let n: i64 = db
            .read(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)))
            .await
            .expect("read");
        assert_eq!(n, 3);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_foreground_write_overtakes_a_background_backlog() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(
            &dir.path().join("t.db"),
            SyncMode::Normal,
            "CREATE TABLE t (x INTEGER); CREATE TABLE u (y INTEGER);",
        )
        .expect("open");
        // ~0.4 s of background work, queued at once.
        let backlog: Vec<_> = (0..2000)
            .map(|x| {
                db.submit(false, move |c| {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                    c.execute("INSERT INTO t VALUES (?1)", [x])
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let t0 = std::time::Instant::now();
        db.write(|c| c.execute("INSERT INTO u VALUES (1)", []))
            .await
            .expect("foreground write");
        let waited = t0.elapsed();
        let behind: i64 = db
            .read(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)))
            .await
            .expect("read");
        assert!(
            behind < 1000,
            "the foreground write waited for {behind} background jobs ({waited:?})"
        );
        for w in backlog {
            w.await.expect("answered").expect("background write");
        }
        let n: i64 = db
            .read(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)))
            .await
            .expect("read");
        assert_eq!(n, 2000, "every background write committed");
    }
}
