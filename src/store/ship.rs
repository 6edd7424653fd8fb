//! The shipper: the only writer of records to PostgreSQL. It reads the spool
//! in order, writes batches in one transaction each, and deletes from the
//! spool only what PostgreSQL committed.
//!
//! Statements are idempotent, so a batch shipped twice (crash between the
//! commit and the spool delete) leaves PostgreSQL as if shipped once:
//! - `machine_state` rows: binary COPY into a session-temporary staging table,
//!   then `INSERT … SELECT … ON CONFLICT (state_id) DO NOTHING`;
//! - operation events: an upsert that only ever moves a row forward, from
//!   `started` to a terminal status (a replayed `started` changes nothing).
//!
//! Errors are sorted by what retrying can do:
//! - the connection, the server's resources or a schema/permission problem
//!   (SQLSTATE classes 08, 53, 57, 58, 40, 42, XX, or no SQLSTATE): back off
//!   with jitter and retry forever, records stay in the spool;
//! - a record PostgreSQL rejects for its content (classes 22 data exception,
//!   23 integrity violation): the batch is retried record by record and each
//!   record that fails alone goes to the spool's dead letters with the error.
//!   The records behind it ship.
//!
//! Never stuck: every round trip has a deadline (a batch's grows with its
//! size, [`ShipperOptions::deadline`]); the socket has TCP keepalives and a
//! user timeout; the session has a `statement_timeout`, a `lock_timeout`
//! and an `idle_in_transaction_session_timeout`. A round trip past its
//! deadline is a stall: logged, counted, shown (`last_error` and since
//! when), and the connection is dropped and opened again. A session left
//! behind on the server (connection lost mid-transaction, holding row
//! locks) is ended at the next connection with `pg_terminate_backend`: the
//! shipper remembers its backend PID and start time. That needs the same
//! role (or `pg_signal_backend`); when not permitted a warning says so and
//! re-shipping waits for the server's `lock_timeout` retries until the old
//! session's `idle_in_transaction_session_timeout` ends it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::pin_mut;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle as TaskHandle;
use tokio::task::JoinHandle;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Transaction};
use tokio_util::sync::CancellationToken;

use super::migrate::{self, ControlsIdType};
use super::record::{MachineState, OperationEvent, Record};
use super::spool::{SpoolError, Spooled};
use super::spool_handle::SpoolHandle;
use crate::backoff::Backoff;
use crate::config::Config;

/// At shutdown, how long the shipper may take for one last batch (the
/// final snapshot, captured just before) while connected: within the
/// daemon's 3 s wait for its parts and the unit's stop budget.
const FINAL_BATCH: Duration = Duration::from_secs(2);

/// Called after PostgreSQL committed a batch and before the spool delete
/// (tests use it to crash exactly there).
pub type CommitHook = Arc<dyn Fn(&[Spooled]) + Send + Sync>;

/// How the shipper works.
#[derive(Clone)]
pub struct ShipperOptions {
    /// Records per transaction.
    pub batch_size: usize,
    /// First delay after a failure.
    pub backoff_initial: Duration,
    /// Longest delay between attempts.
    pub backoff_max: Duration,
    /// How long to wait for new records before looking again anyway.
    pub idle_wait: Duration,
    /// Host and configuration whose `stepper_roles` rows to keep current.
    pub roles: Option<(String, Arc<Config>)>,
    /// Migrate an unmigrated database instead of waiting for `stringdriverd migrate`.
    pub auto_migrate: bool,
    /// See [`CommitHook`].
    pub after_commit: Option<CommitHook>,
    /// Deadline of any round trip, and of a batch before its records count.
    pub deadline_base: Duration,
    /// What each record of a batch adds to its deadline.
    pub deadline_per_record: Duration,
    /// The session's `lock_timeout`: how long a write waits on a row lock
    /// (held by a session left behind) before the batch is retried.
    pub lock_timeout: Duration,
    /// The session's `idle_in_transaction_session_timeout`: a session of
    /// ours left mid-transaction is ended by the server after this.
    pub idle_in_transaction_timeout: Duration,
}

impl ShipperOptions {
    /// How long a round trip writing `records` records may take.
    pub fn deadline(&self, records: usize) -> Duration {
        let n = u32::try_from(records).unwrap_or(u32::MAX);
        self.deadline_base
            .saturating_add(self.deadline_per_record.saturating_mul(n))
    }
}

impl Default for ShipperOptions {
    fn default() -> Self {
        ShipperOptions {
            batch_size: 2000,
            backoff_initial: Duration::from_millis(500),
            // A database back from an outage is used within ~10 s.
            backoff_max: Duration::from_secs(10),
            idle_wait: Duration::from_secs(1),
            roles: None,
            auto_migrate: false,
            after_commit: None,
            deadline_base: Duration::from_secs(20),
            deadline_per_record: Duration::from_millis(5),
            lock_timeout: Duration::from_secs(15),
            idle_in_transaction_timeout: Duration::from_secs(60),
        }
    }
}

/// What the shipper reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ShipperStatus {
    /// Whether it holds a working connection to a migrated database.
    pub connected: bool,
    /// The standing error, for the operator; cleared when a batch ships.
    pub last_error: Option<String>,
    /// Since when shipping has failed (the first error of the run).
    pub error_since: Option<DateTime<Utc>>,
    /// Round trips that passed their deadline (each dropped its connection).
    pub stalls: u64,
    /// When the latest stall was detected.
    pub last_stall_at: Option<DateTime<Utc>>,
    /// Earlier sessions of ours ended with `pg_terminate_backend`.
    pub sessions_ended: u64,
    /// When it last committed a batch.
    pub last_shipped_at: Option<DateTime<Utc>>,
    /// Records shipped since start.
    pub shipped: u64,
    /// Records moved to the dead letters since start.
    pub dead_lettered: u64,
    /// Connection attempts that failed since start.
    pub connect_failures: u64,
}

/// Starts the shipper task.
pub fn spawn(
    spool: SpoolHandle,
    pg: impl Into<super::pg::PgTarget>,
    opts: ShipperOptions,
    shutdown: CancellationToken,
) -> (watch::Receiver<ShipperStatus>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(ShipperStatus::default());
    let shipper = Shipper {
        spool,
        pg: pg.into(),
        opts,
        status: tx,
        shutdown,
    };
    (rx, tokio::spawn(shipper.run()))
}

struct Shipper {
    spool: SpoolHandle,
    pg: super::pg::PgTarget,
    opts: ShipperOptions,
    status: watch::Sender<ShipperStatus>,
    shutdown: CancellationToken,
}

/// Why a session with the database ended.
enum Stop {
    Shutdown,
    Retry(String),
}

/// A server session: its backend PID and start time (together they name it
/// even after the PID is reused; no start time when the server hides it).
type BackendId = (i32, Option<String>);

/// A connection whose driving task ends with it, even if its socket froze.
struct Session {
    client: Client,
    task: TaskHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether retrying the same statement later may succeed (see module doc).
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        None => true,
        Some(db) => {
            let code = db.code().code();
            !(code.starts_with("22") || code.starts_with("23"))
        }
    }
}

fn pg_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(d) = db.detail() {
                s.push_str(&format!("; {d}"));
            }
            s
        }
        None => e.to_string(),
    }
}

impl Shipper {
    /// Records the error in the status and, when it is a new one, in the
    /// spool, so that `spool-status` can show it without the daemon.
    async fn note_error(&self, e: &str) {
        let new = self.status.borrow().last_error.as_deref() != Some(e);
        let mut since = Utc::now();
        self.status.send_modify(|s| {
            s.last_error = Some(e.to_string());
            since = *s.error_since.get_or_insert(since);
        });
        // Awaited, so that a recovery right after clears it for good.
        if new {
            if let Err(err) = self.spool.set_last_error(e.to_string(), since).await {
                tracing::warn!(error = %err, "cannot note the shipping error in the spool");
            }
        }
    }

    /// Checks (or, with `auto_migrate`, brings) the database to this daemon's schema.
    async fn schema(&self, client: &mut Client) -> Result<migrate::SchemaInfo, String> {
        match migrate::check_migrated(client).await {
            Err(migrate::MigrateError::NotMigrated { .. }) if self.opts.auto_migrate => {
                let report = migrate::migrate(client).await.map_err(|e| e.to_string())?;
                tracing::info!(applied = ?report.applied, version = report.current, "database migrated (auto_migrate)");
                migrate::check_migrated(client)
                    .await
                    .map_err(|e| e.to_string())
            }
            other => other.map_err(|e| e.to_string()),
        }
    }

    /// Sleeps `d` unless shutdown comes first (then false).
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    /// Past `deadline`: logged, counted and shown; the caller drops the connection.
    fn stalled(&self, what: &str, deadline: Duration) -> Stop {
        let e = format!(
            "no answer from PostgreSQL within {} ({what}): connection dropped, reconnecting",
            humantime::format_duration(deadline)
        );
        tracing::error!(database = %super::pg::describe(&self.pg), error = %e, "shipping stalled");
        self.status.send_modify(|s| {
            s.stalls += 1;
            s.last_stall_at = Some(Utc::now());
        });
        Stop::Retry(e)
    }

    /// The session's limits, and who it is on the server.
    async fn prepare(&self, client: &Client) -> Result<BackendId, tokio_postgres::Error> {
        let ms = |d: Duration| d.as_millis().max(1);
        client
            .batch_execute(&format!(
                "SET statement_timeout = {}; SET lock_timeout = {}; \
                 SET idle_in_transaction_session_timeout = {}",
                ms(self.opts.deadline(self.opts.batch_size.max(1))),
                ms(self.opts.lock_timeout),
                ms(self.opts.idle_in_transaction_timeout),
            ))
            .await?;
        let row = client
            .query_one(
                "SELECT pg_backend_pid(), \
                 (SELECT backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid())",
                &[],
            )
            .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    /// Ends our earlier session if the server still has it (it may hold
    /// row locks that the records shipped again would wait on).
    async fn end_earlier(&self, client: &Client, (pid, started): &BackendId) {
        let Some(started) = started else {
            // Without its start time a PID may name someone else's session now.
            tracing::debug!(
                pid,
                "the server did not show when our earlier session started: not ending it"
            );
            return;
        };
        let ended = client
            .query_opt(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE pid = $1 AND backend_start::text = $2",
                &[pid, started],
            )
            .await;
        match ended {
            Ok(None) => {}
            Ok(Some(row)) if row.try_get::<_, bool>(0).unwrap_or(false) => {
                tracing::warn!(
                    pid,
                    "ended our earlier database session, which the server still had"
                );
                self.status.send_modify(|s| s.sessions_ended += 1);
            }
            Ok(Some(_)) => {
                tracing::warn!(pid, "our earlier database session is still on the server and could not be signalled; records it locks wait until the server ends it (idle_in_transaction_session_timeout)");
            }
            Err(e) => tracing::warn!(
                pid,
                error = %pg_error_text(&e),
                "cannot end our earlier database session (pg_terminate_backend needs the same role or pg_signal_backend); records it locks wait until the server ends it (idle_in_transaction_session_timeout)"
            ),
        }
    }

    /// Connected: checks the schema, sets the session up, ends the earlier
    /// session, updates the roles, each bounded by the base deadline.
    async fn open(
        &self,
        client: &mut Client,
        earlier: &mut Option<BackendId>,
    ) -> Result<migrate::SchemaInfo, Stop> {
        let limit = self.opts.deadline_base;
        // Applying migrations takes what it takes; checking is a round trip.
        let info = if self.opts.auto_migrate {
            self.schema(client).await.map_err(Stop::Retry)?
        } else {
            match tokio::time::timeout(limit, self.schema(client)).await {
                Ok(info) => info.map_err(Stop::Retry)?,
                Err(_) => return Err(self.stalled("checking the schema", limit)),
            }
        };
        let setup = async {
            let me = self
                .prepare(client)
                .await
                .map_err(|e| Stop::Retry(pg_error_text(&e)))?;
            if let Some(old) = earlier.replace(me) {
                self.end_earlier(client, &old).await;
            }
            self.sync_roles(client).await;
            Ok(())
        };
        match tokio::time::timeout(limit, setup).await {
            Ok(r) => r.map(|()| info),
            Err(_) => Err(self.stalled("setting up the session", limit)),
        }
    }

    async fn run(self) {
        let mut backoff = Backoff::new(self.opts.backoff_initial, self.opts.backoff_max);
        let target = super::pg::describe(&self.pg);
        let mut pg = self.pg.clone();
        super::pg::harden(
            &mut pg,
            self.opts.deadline_base,
            self.opts.deadline(self.opts.batch_size.max(1)),
        );
        // Our latest server session, ended at the next connection if the
        // server still has it.
        let mut earlier: Option<BackendId> = None;
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            let round = crate::supervise::guarded("shipper", async {
                match super::pg::connect_owned(&pg).await {
                    Ok((client, task)) => {
                        let mut session = Session { client, task };
                        match self.open(&mut session.client, &mut earlier).await {
                            Ok(info) => {
                                tracing::info!(database = %target, version = info.version, "shipper connected");
                                self.status.send_modify(|s| s.connected = true);
                                backoff.reset();
                                self.session(&mut session.client, info.controls_id, &mut backoff)
                                    .await
                            }
                            Err(stop) => stop,
                        }
                    }
                    Err(e) => {
                        self.status.send_modify(|s| s.connect_failures += 1);
                        Stop::Retry(e.to_string())
                    }
                }
            })
            .await;
            // Nothing a panicked round committed is lost: records leave the
            // spool only after their commit, and shipping them again is idempotent.
            let stop = round.unwrap_or_else(Stop::Retry);
            self.status.send_modify(|s| s.connected = false);
            match stop {
                Stop::Shutdown => break,
                Stop::Retry(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(database = %target, error = %e, retry_in = ?delay, "shipping paused");
                    self.note_error(&e).await;
                    if !self.pause(delay).await {
                        break;
                    }
                }
            }
        }
        tracing::info!("shipper stopped");
    }

    async fn sync_roles(&self, client: &mut Client) {
        if let Some((host, config)) = &self.opts.roles {
            match super::roles::sync_stepper_roles(client, host, config).await {
                Ok(n) if n > 0 => tracing::info!(changed = n, "stepper_roles updated"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %pg_error_text(&e), "cannot update stepper_roles"),
            }
        }
    }

    /// Ships until the connection fails or shutdown. Pipelined: while batch
    /// N is written to PostgreSQL, batch N+1 is read from the spool and batch
    /// N-1 (already committed) is deleted from it.
    async fn session(
        &self,
        client: &mut Client,
        ctl: ControlsIdType,
        backoff: &mut Backoff,
    ) -> Stop {
        let n = self.opts.batch_size.max(1);
        // Committed (or dead-lettered) in PostgreSQL, not yet deleted from the spool.
        let mut committed: Vec<Spooled> = Vec::new();
        let mut batch: Vec<Spooled> = Vec::new();
        let stop = loop {
            if self.shutdown.is_cancelled() {
                // Connected at shutdown: one last batch, so that the final
                // snapshot reaches PostgreSQL now rather than at the next start.
                self.final_batch(client, ctl, &mut batch, &mut committed)
                    .await;
                break Stop::Shutdown;
            }
            if batch.is_empty() {
                if let Err(e) = self.shipped(std::mem::take(&mut committed)).await {
                    break Stop::Retry(e.to_string());
                }
                let notified = self.spool.notified();
                match self.spool.peek(n).await {
                    Ok(b) if b.is_empty() => {
                        // Connected with nothing left to ship: recovered too.
                        if let Err(e) = self.recovered().await {
                            tracing::warn!(error = %e, "cannot clear the shipping error in the spool");
                        }
                        // Shutdown goes round once more: the final
                        // snapshot may have arrived with it.
                        tokio::select! {
                            _ = self.shutdown.cancelled() => {}
                            _ = notified => {}
                            _ = tokio::time::sleep(self.opts.idle_wait) => {}
                        }
                    }
                    Ok(b) => batch = b,
                    Err(e) => {
                        // The spool is local: wait and look again, the records are safe.
                        tracing::error!(error = %e, "cannot read the spool");
                        self.note_error(&e.to_string()).await;
                        if !self.pause(backoff.next_delay()).await {
                            break Stop::Shutdown;
                        }
                    }
                }
                continue;
            }
            let last = batch.last().map_or(0, |s| s.seq);
            let deadline = self.opts.deadline(batch.len());
            let (result, next, removed) = tokio::join!(
                tokio::time::timeout(deadline, ship(client, &batch, ctl)),
                self.spool.peek_after(last, n),
                self.shipped(std::mem::take(&mut committed)),
            );
            if let Err(e) = removed {
                break Stop::Retry(e.to_string());
            }
            let Ok(result) = result else {
                break self.stalled(&format!("a batch of {} records", batch.len()), deadline);
            };
            match result {
                Ok(()) => {
                    if let Some(hook) = &self.opts.after_commit {
                        hook(&batch);
                    }
                    committed = std::mem::take(&mut batch);
                }
                Err(e) if is_transient(&e) => break Stop::Retry(pg_error_text(&e)),
                Err(e) => {
                    tracing::warn!(error = %pg_error_text(&e), records = batch.len(), "batch rejected: shipping record by record");
                    if let Some(stop) = self
                        .one_by_one(client, std::mem::take(&mut batch), ctl)
                        .await
                    {
                        break stop;
                    }
                }
            }
            // A failed read-ahead costs nothing but the read: the next round reads again.
            batch = next.unwrap_or_default();
        };
        // Whatever PostgreSQL committed leaves the spool before we go.
        if let Err(e) = self.shipped(committed).await {
            tracing::warn!(error = %e, "could not delete shipped records from the spool; they will be shipped again (idempotently)");
        }
        stop
    }

    /// One bounded attempt at shipping everything waiting (the batch in
    /// hand, then what follows it in the spool) when shutdown came while
    /// connected. A failure or timeout leaves the rest in the spool for the
    /// next start.
    async fn final_batch(
        &self,
        client: &mut Client,
        ctl: ControlsIdType,
        batch: &mut Vec<Spooled>,
        committed: &mut Vec<Spooled>,
    ) {
        let n = self.opts.batch_size.max(1);
        // Until nothing waits: the batch in hand may be a read-ahead taken
        // before the final snapshot was captured.
        let attempt = async {
            loop {
                if batch.is_empty() {
                    *batch = match committed.last().map(|s| s.seq) {
                        Some(seq) => self.spool.peek_after(seq, n).await.ok()?,
                        None => self.spool.peek(n).await.ok()?,
                    };
                }
                if batch.is_empty() {
                    return Some(());
                }
                ship(client, batch, ctl).await.ok()?;
                if let Some(hook) = &self.opts.after_commit {
                    hook(batch);
                }
                committed.append(batch);
            }
        };
        match tokio::time::timeout(FINAL_BATCH, attempt).await {
            Ok(_) => {}
            Err(_) => tracing::warn!(
                "the last batch did not ship within {FINAL_BATCH:?} of shutdown; it stays in the spool"
            ),
        }
    }

    /// After a commit: the spool delete, then the count.
    async fn shipped(&self, batch: Vec<Spooled>) -> Result<(), SpoolError> {
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.len() as u64;
        self.spool.remove(batch).await?;
        self.status.send_modify(|s| {
            s.shipped += n;
            s.last_shipped_at = Some(Utc::now());
        });
        self.recovered().await
    }

    /// Shipping works (a batch shipped, or nothing waits): no error stands
    /// any more, neither in the status nor in the spool.
    async fn recovered(&self) -> Result<(), SpoolError> {
        if self.status.borrow().last_error.is_none() {
            return Ok(());
        }
        self.status.send_modify(|s| {
            s.last_error = None;
            s.error_since = None;
        });
        tracing::info!("shipping resumed");
        self.spool.clear_last_error().await
    }

    /// Ships each record alone; those PostgreSQL rejects go to the dead letters.
    async fn one_by_one(
        &self,
        client: &mut Client,
        batch: Vec<Spooled>,
        ctl: ControlsIdType,
    ) -> Option<Stop> {
        let deadline = self.opts.deadline(1);
        for mut rec in batch {
            let one = std::slice::from_ref(&rec);
            let Ok(mut result) = tokio::time::timeout(deadline, ship(client, one, ctl)).await
            else {
                return Some(self.stalled("one record", deadline));
            };
            // The audmon frame a snapshot was linked to can be gone by the
            // time it ships (audmon pruned it during a long outage). The
            // snapshot is still true: ship it unlinked rather than lose it.
            if let (Err(e), Record::MachineState { row, .. }) = (&result, &mut rec.record) {
                let lost_link = e.as_db_error().is_some_and(|db| {
                    db.code() == &tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION
                        && db.constraint().is_some_and(|c| c.contains("controls_id"))
                });
                if lost_link && row.controls_id.is_some() {
                    tracing::warn!(state_id = %row.state_id, controls_id = ?row.controls_id, "the linked controls row is gone: shipping the snapshot without controls_id");
                    row.controls_id = None;
                    let one = std::slice::from_ref(&rec);
                    match tokio::time::timeout(deadline, ship(client, one, ctl)).await {
                        Ok(r) => result = r,
                        Err(_) => return Some(self.stalled("one record", deadline)),
                    }
                }
            }
            let one = std::slice::from_ref(&rec);
            match result {
                Ok(()) => {
                    if let Some(hook) = &self.opts.after_commit {
                        hook(one);
                    }
                    if let Err(e) = self.shipped(vec![rec.clone()]).await {
                        return Some(Stop::Retry(e.to_string()));
                    }
                }
                Err(e) if is_transient(&e) => return Some(Stop::Retry(pg_error_text(&e))),
                Err(e) => {
                    let why = pg_error_text(&e);
                    tracing::error!(seq = rec.seq, record = %rec.record.describe(), error = %why, "record rejected by PostgreSQL: moved to dead letters");
                    if let Err(e) = self.spool.dead_letter(rec.seq, why).await {
                        return Some(Stop::Retry(e.to_string()));
                    }
                    self.status.send_modify(|s| s.dead_lettered += 1);
                }
            }
        }
        None
    }
}

/// Writes `batch` in one transaction, in spool order.
pub async fn ship(
    client: &mut Client,
    batch: &[Spooled],
    ctl: ControlsIdType,
) -> Result<(), tokio_postgres::Error> {
    let mut tx = client.transaction().await?;
    let mut i = 0;
    while i < batch.len() {
        // A run of records of one kind, keeping the order between kinds: a
        // snapshot is always written before the operations that follow it.
        let is_state = matches!(batch[i].record, Record::MachineState { .. });
        let mut j = i;
        while j < batch.len() && matches!(batch[j].record, Record::MachineState { .. }) == is_state
        {
            j += 1;
        }
        if is_state {
            let rows: Vec<&MachineState> = batch[i..j]
                .iter()
                .filter_map(|s| match &s.record {
                    Record::MachineState { row, .. } => Some(row),
                    Record::Operation { .. } => None,
                })
                .collect();
            copy_states(&mut tx, &rows, ctl).await?;
        } else {
            let stmt = tx.prepare(UPSERT_OPERATION).await?;
            for s in &batch[i..j] {
                if let Record::Operation { event } = &s.record {
                    upsert_operation(&tx, &stmt, event).await?;
                }
            }
        }
        i = j;
    }
    tx.commit().await
}

const STATE_COLUMNS: &str = "state_id, controls_id, host, recorded_at, stepper_positions, stepper_enabled, \
    bump_check_enable, z_up_step, z_down_step, tune_rest, x_rest, z_rest, lap_rest, adjustment_level, \
    retry_threshold, delta_threshold, z_variance_threshold, voice_count, amp_sum, voice_count_min, \
    voice_count_max, amp_sum_min, amp_sum_max";

/// Writes snapshots. The common case (none of them in PostgreSQL yet) is one
/// binary COPY straight into the table, inside a savepoint. A replay after a
/// crash hits the primary key (23505): the savepoint is rolled back and the
/// rows go through a staging table and `ON CONFLICT DO NOTHING` instead.
async fn copy_states(
    tx: &mut Transaction<'_>,
    rows: &[&MachineState],
    ctl: ControlsIdType,
) -> Result<(), tokio_postgres::Error> {
    let direct = tx.savepoint("sd_direct_copy").await?;
    match copy_rows(&direct, "machine_state", rows, ctl).await {
        Ok(()) => return direct.commit().await,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
            direct.rollback().await?;
        }
        Err(e) => return Err(e),
    }
    tx.batch_execute(
        "CREATE TEMP TABLE IF NOT EXISTS sd_stage_machine_state (LIKE machine_state) ON COMMIT DELETE ROWS",
    )
    .await?;
    copy_rows(tx, "sd_stage_machine_state", rows, ctl).await?;
    tx.execute(
        &format!(
            "INSERT INTO machine_state ({STATE_COLUMNS}) SELECT {STATE_COLUMNS} FROM sd_stage_machine_state \
             ON CONFLICT (state_id) DO NOTHING"
        ),
        &[],
    )
    .await?;
    tx.execute("DELETE FROM sd_stage_machine_state", &[])
        .await?;
    Ok(())
}

/// One binary COPY of `rows` into `table` (machine_state or its staging
/// copy). Public because the benchmarks measure shipping against it.
pub async fn copy_rows(
    tx: &Transaction<'_>,
    table: &str,
    rows: &[&MachineState],
    ctl: ControlsIdType,
) -> Result<(), tokio_postgres::Error> {
    let controls_type = match ctl {
        ControlsIdType::Uuid => Type::UUID,
        ControlsIdType::Text => Type::TEXT,
    };
    let types = [
        Type::UUID,
        controls_type,
        Type::VARCHAR,
        Type::TIMESTAMPTZ,
        Type::INT4_ARRAY,
        Type::BOOL_ARRAY,
        Type::BOOL,
        Type::INT4,
        Type::INT4,
        Type::FLOAT4,
        Type::FLOAT4,
        Type::FLOAT4,
        Type::FLOAT4,
        Type::INT4,
        Type::INT4,
        Type::INT4,
        Type::INT4,
        Type::INT4_ARRAY,
        Type::FLOAT4_ARRAY,
        Type::INT4_ARRAY,
        Type::INT4_ARRAY,
        Type::INT4_ARRAY,
        Type::INT4_ARRAY,
    ];
    let sink = tx
        .copy_in(&format!("COPY {table} ({STATE_COLUMNS}) FROM STDIN BINARY"))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    for r in rows {
        // Some audmon installs keep controls_id as TEXT: write the UUID's text form there.
        let controls_text = r.controls_id.map(|u| u.to_string());
        let controls: &(dyn ToSql + Sync) = match ctl {
            ControlsIdType::Uuid => &r.controls_id,
            ControlsIdType::Text => &controls_text,
        };
        let values: [&(dyn ToSql + Sync); 23] = [
            &r.state_id,
            controls,
            &r.host,
            &r.recorded_at,
            &r.stepper_positions,
            &r.stepper_enabled,
            &r.bump_check_enable,
            &r.z_up_step,
            &r.z_down_step,
            &r.tune_rest,
            &r.x_rest,
            &r.z_rest,
            &r.lap_rest,
            &r.adjustment_level,
            &r.retry_threshold,
            &r.delta_threshold,
            &r.z_variance_threshold,
            &r.voice_count,
            &r.amp_sum,
            &r.voice_count_min,
            &r.voice_count_max,
            &r.amp_sum_min,
            &r.amp_sum_max,
        ];
        writer.as_mut().write(&values).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// Only `started` may be overwritten, and only by a terminal status: a
/// replayed event never moves a row backwards. The start time stays.
const UPSERT_OPERATION: &str =
    "INSERT INTO operations (operation_id, state_id, host, recorded_at, operation_type, \
        operation_status, message, stepper_indices, final_positions, completed_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
    ON CONFLICT (operation_id) DO UPDATE SET \
        operation_status = EXCLUDED.operation_status, \
        message = EXCLUDED.message, \
        stepper_indices = EXCLUDED.stepper_indices, \
        final_positions = EXCLUDED.final_positions, \
        completed_at = EXCLUDED.completed_at, \
        state_id = COALESCE(operations.state_id, EXCLUDED.state_id) \
    WHERE operations.operation_status = 'started' AND EXCLUDED.operation_status <> 'started'";

async fn upsert_operation(
    tx: &Transaction<'_>,
    stmt: &tokio_postgres::Statement,
    e: &OperationEvent,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        stmt,
        &[
            &e.operation_id,
            &e.state_id,
            &e.host,
            &e.recorded_at,
            &e.operation_type.as_str(),
            &e.operation_status.as_str(),
            &e.message,
            &e.stepper_indices,
            &e.final_positions,
            &e.completed_at,
        ],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15 item 6: with a 60 s cap, shipping resumed up to a minute
    /// after the database came back. The schedule of a long outage, as the
    /// shipper runs it, must look again at least every ~11 s.
    #[test]
    fn a_database_back_from_a_long_outage_is_retried_within_eleven_seconds() {
        let o = ShipperOptions::default();
        let mut b = Backoff::new(o.backoff_initial, o.backoff_max);
        let delays: Vec<Duration> = (0..50).map(|_| b.next_delay()).collect();
        let longest = delays.iter().max().copied().unwrap_or_default();
        assert!(longest <= Duration::from_secs(11), "{longest:?}");
        // Still a backoff: it grows to near the cap during the outage.
        assert!(longest >= Duration::from_secs(9), "{longest:?}");
        assert!(delays[0] < Duration::from_secs(1), "{:?}", delays[0]);
    }

    #[test]
    fn a_batch_deadline_grows_with_its_size() {
        let o = ShipperOptions {
            deadline_base: Duration::from_secs(2),
            deadline_per_record: Duration::from_millis(10),
            ..ShipperOptions::default()
        };
        assert_eq!(o.deadline(0), Duration::from_secs(2));
        assert_eq!(o.deadline(100), Duration::from_secs(3));
        assert_eq!(o.deadline(usize::MAX), o.deadline(u32::MAX as usize));
    }
}
