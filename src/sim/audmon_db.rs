//! The simulated audmon's database rows: what audmon logs to PostgreSQL
//! beside its shared-memory feed (audmon-feed.md, DATABASE_SCHEMA.md).
//!
//! For every analysis frame it writes, audmon logs one `controls` row
//! (`controls_id`, `host`, `recorded_at`) and that frame's `partials` rows,
//! linked by `controls_id`. [`spawn`] starts a task that does the same for
//! the demo's simulated audmon: the feed thread hands each frame it wrote to
//! [`AudmonDb::offer`], and the task inserts them in batches (one
//! transaction, one statement per table, however many frames are waiting).
//!
//! Every slot of the frame becomes a `partials` row, `partial_index` 0 to
//! partials − 1 in each channel, empty slots (amplitude 0) included, exactly
//! as the feed file carries them: a frame always has channels × partials
//! rows, and a silent frame is data too.
//!
//! # Never in the way
//! [`AudmonDb::offer`] never blocks and never awaits (a bounded queue and
//! `try_send`), so neither the feed nor the daemon can be slowed by the
//! database. When the queue is full, or while there is no session (the
//! database is away, its tables are missing), frames are dropped and
//! counted, as audmon loses them: nothing is kept to be written later.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::store::pg::{self, error_text, PgTarget};

/// Frames waiting for the database: a few seconds of frames at the demo's
/// fastest rate, enough to ride out one slow insert.
const QUEUE: usize = 256;

/// Most frames written in one transaction.
const MAX_BATCH: usize = 64;

/// A batch that takes longer than this counts as the database being away.
const INSERT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the task may flush what is queued once told to stop.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// Reconnect delays. Short: at the demo's start the tables appear only
/// once the daemon has migrated the database, and every second waited is a
/// second of frames lost and snapshots without a frame to link to.
const BACKOFF_INITIAL: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// One analysis frame: when audmon wrote it, and per channel its
/// (frequency, amplitude) slots.
#[derive(Debug, Clone)]
struct Frame {
    at: DateTime<Utc>,
    channels: Vec<Vec<(f32, f32)>>,
}

/// What the task has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AudmonDbStatus {
    /// Frames written: `controls` rows committed (each with its partials).
    pub written: u64,
    /// `partials` rows committed.
    pub partials: u64,
    /// Frames lost: the queue was full, no session was open, or their batch
    /// failed.
    pub dropped: u64,
    /// A session is open.
    pub connected: bool,
    /// The most recent problem, kept after recovery.
    pub last_error: Option<String>,
}

/// The handle the simulated audmon writes through. Cheap to clone; usable
/// from any thread (the demo's feed is an OS thread).
#[derive(Debug, Clone)]
pub struct AudmonDb {
    tx: mpsc::Sender<Frame>,
    status: watch::Sender<AudmonDbStatus>,
}

impl AudmonDb {
    /// Queues the frame written at `at` for the database. Never blocks: a
    /// full queue or a stopped task drops it and counts it.
    pub fn offer(&self, at: DateTime<Utc>, frame: &[Vec<(f32, f32)>]) {
        let frame = Frame {
            at,
            channels: frame.to_vec(),
        };
        if self.tx.try_send(frame).is_err() {
            self.status.send_modify(|s| s.dropped += 1);
        }
    }

    /// What the task has done so far.
    pub fn status(&self) -> AudmonDbStatus {
        self.status.borrow().clone()
    }

    /// Waits until the status satisfies `pred` and returns it, or `None`
    /// after `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&AudmonDbStatus) -> bool,
    ) -> Option<AudmonDbStatus> {
        let mut rx = self.status.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| pred(s)))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|s| s.clone())
    }
}

/// Starts the task writing the frames offered to the returned handle as
/// `host`'s `controls` and `partials` rows of the database `target`. The task
/// reconnects with capped backoff; on `shutdown` it writes what is queued
/// (for at most a few seconds) and ends.
pub fn spawn(
    target: PgTarget,
    host: String,
    shutdown: CancellationToken,
) -> (AudmonDb, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let (status, _) = watch::channel(AudmonDbStatus::default());
    let writer = Writer {
        server: pg::describe(&target),
        target,
        host,
        rx,
        status: status.clone(),
        shutdown,
    };
    (AudmonDb { tx, status }, tokio::spawn(writer.run()))
}

/// The statements of one session.
struct Session {
    client: Client,
    controls: Statement,
    partials: Statement,
}

struct Writer {
    target: PgTarget,
    server: String,
    host: String,
    rx: mpsc::Receiver<Frame>,
    status: watch::Sender<AudmonDbStatus>,
    shutdown: CancellationToken,
}

impl Writer {
    async fn run(mut self) {
        let mut backoff = Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX);
        let shutdown = self.shutdown.clone();
        loop {
            let opened = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                s = open(&self.target) => s,
            };
            match opened {
                Ok(mut session) => {
                    backoff.reset();
                    self.status.send_modify(|s| s.connected = true);
                    tracing::info!(server = %self.server, host = %self.host, "simulated audmon: writing controls and partials");
                    let failure = self.serve(&mut session).await;
                    self.status.send_modify(|s| s.connected = false);
                    match failure {
                        None => return,
                        Some(e) => self.failed(e),
                    }
                }
                Err(e) => self.failed(e),
            }
            // Frames that arrive while there is no session are lost, as
            // audmon loses them: count them rather than keep them.
            let pause = tokio::time::sleep(backoff.next_delay());
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => {
                        self.drop_queued();
                        return;
                    }
                    _ = &mut pause => break,
                    f = self.rx.recv() => match f {
                        Some(_) => self.status.send_modify(|s| s.dropped += 1),
                        None => return,
                    },
                }
            }
        }
        self.drop_queued();
    }

    /// Writes frames until the session fails (`Some(why)`) or the task is
    /// told to stop or every handle is gone (`None`).
    async fn serve(&mut self, session: &mut Session) -> Option<String> {
        let shutdown = self.shutdown.clone();
        loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    return self.flush(session).await;
                }
                f = self.rx.recv() => f?,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(f) => batch.push(f),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.write(session, &batch).await {
                return Some(e);
            }
        }
    }

    /// What is queued, written within [`FLUSH_TIMEOUT`]; the rest dropped.
    async fn flush(&mut self, session: &mut Session) -> Option<String> {
        let deadline = tokio::time::Instant::now() + FLUSH_TIMEOUT;
        loop {
            let mut batch = Vec::new();
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(f) => batch.push(f),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                return None;
            }
            if tokio::time::Instant::now() >= deadline {
                let n = batch.len() as u64;
                self.status.send_modify(|s| s.dropped += n);
                self.drop_queued();
                return None;
            }
            if let Err(e) = self.write(session, &batch).await {
                self.drop_queued();
                return Some(e);
            }
        }
    }

    /// One transaction for `batch`; on failure its frames are counted as
    /// dropped and the error returned.
    async fn write(&self, session: &mut Session, batch: &[Frame]) -> Result<(), String> {
        let n = batch.len() as u64;
        let result = tokio::time::timeout(INSERT_TIMEOUT, insert(session, &self.host, batch)).await;
        match result {
            Ok(Ok(partials)) => {
                self.status.send_modify(|s| {
                    s.written += n;
                    s.partials += partials;
                });
                Ok(())
            }
            Ok(Err(e)) => {
                self.status.send_modify(|s| s.dropped += n);
                Err(format!("writing controls and partials: {}", error_text(&e)))
            }
            Err(_) => {
                self.status.send_modify(|s| s.dropped += n);
                Err(format!(
                    "writing controls and partials: no answer within {}",
                    humantime::format_duration(INSERT_TIMEOUT)
                ))
            }
        }
    }

    fn failed(&self, error: String) {
        let fresh = self.status.borrow().last_error.as_deref() != Some(error.as_str());
        if fresh {
            tracing::warn!(server = %self.server, error = %error, "simulated audmon: cannot write to the database; dropping frames until it answers");
        }
        self.status.send_modify(|s| s.last_error = Some(error));
    }

    fn drop_queued(&mut self) {
        let mut n = 0;
        while self.rx.try_recv().is_ok() {
            n += 1;
        }
        if n > 0 {
            self.status.send_modify(|s| s.dropped += n);
        }
    }
}

/// Opens a session and prepares the two inserts, with `controls_id` cast to
/// the type of audmon's column (uuid per the schema document, text on some
/// installs; migrations/V1 accepts both).
async fn open(target: &PgTarget) -> Result<Session, String> {
    let client = pg::connect(target).await.map_err(|e| e.to_string())?;
    let row = client
        .query_opt(
            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             WHERE a.attrelid = to_regclass('controls') AND a.attname = 'controls_id' \
             AND NOT a.attisdropped",
            &[],
        )
        .await
        .map_err(|e| {
            format!(
                "reading the type of controls.controls_id: {}",
                error_text(&e)
            )
        })?;
    let id_type: String = match row {
        Some(r) => r
            .try_get(0)
            .map_err(|e| format!("reading the type of controls.controls_id: {e}"))?,
        None => {
            return Err(
                "no table controls with a column controls_id (not migrated yet?)".to_string(),
            )
        }
    };
    let cast = if id_type == "uuid" { "uuid" } else { "text" };
    let controls = client
        .prepare_typed(
            &format!(
                "INSERT INTO controls (controls_id, host, recorded_at) \
                 SELECT u.id::{cast}, $2, u.at FROM unnest($1::text[], $3::timestamptz[]) AS u(id, at)"
            ),
            &[Type::TEXT_ARRAY, Type::VARCHAR, Type::TIMESTAMPTZ_ARRAY],
        )
        .await
        .map_err(|e| format!("preparing the controls insert: {}", error_text(&e)))?;
    let partials = client
        .prepare_typed(
            &format!(
                "INSERT INTO partials (controls_id, channel, partial_index, frequency, amplitude) \
                 SELECT u.id::{cast}, u.ch, u.k, u.f, u.a \
                 FROM unnest($1::text[], $2::int4[], $3::int4[], $4::float4[], $5::float4[]) \
                 AS u(id, ch, k, f, a)"
            ),
            &[
                Type::TEXT_ARRAY,
                Type::INT4_ARRAY,
                Type::INT4_ARRAY,
                Type::FLOAT4_ARRAY,
                Type::FLOAT4_ARRAY,
            ],
        )
        .await
        .map_err(|e| format!("preparing the partials insert: {}", error_text(&e)))?;
    Ok(Session {
        client,
        controls,
        partials,
    })
}

/// Inserts `batch` in one transaction; returns the partials rows written.
async fn insert(
    session: &mut Session,
    host: &str,
    batch: &[Frame],
) -> Result<u64, tokio_postgres::Error> {
    let ids: Vec<String> = batch
        .iter()
        .map(|_| Uuid::new_v4().hyphenated().to_string())
        .collect();
    let times: Vec<DateTime<Utc>> = batch.iter().map(|f| f.at).collect();
    let (mut pid, mut ch, mut k, mut freq, mut amp) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (id, frame) in ids.iter().zip(batch) {
        for (c, slots) in frame.channels.iter().enumerate() {
            for (i, &(f, a)) in slots.iter().enumerate() {
                pid.push(id.as_str());
                ch.push(i32::try_from(c).unwrap_or(i32::MAX));
                k.push(i32::try_from(i).unwrap_or(i32::MAX));
                freq.push(f);
                amp.push(a);
            }
        }
    }
    let tx = session.client.transaction().await?;
    tx.execute(&session.controls, &[&ids, &host, &times])
        .await?;
    let written = tx
        .execute(&session.partials, &[&pid, &ch, &k, &freq, &amp])
        .await?;
    tx.commit().await?;
    Ok(written)
}
