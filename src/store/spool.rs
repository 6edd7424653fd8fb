//! The local durable spool: every record is committed here before anything
//! reports it captured, and leaves only after PostgreSQL committed it.
//!
//! # File format (spool format 1)
//!
//! One SQLite database (WAL journal, `synchronous=FULL`, so a commit is on
//! disk when `append` returns) with four tables:
//!
//! - `records(seq INTEGER PRIMARY KEY AUTOINCREMENT, kind INTEGER, thinnable
//!   INTEGER, captured_at INTEGER, payload BLOB, crc INTEGER)`: the records
//!   not yet shipped. `seq` is the capture order and therefore the shipping
//!   order (AUTOINCREMENT: a number is never reused, even after the table
//!   emptied). `kind` is 1 for machine_state, 2 for an operation event;
//!   `thinnable` is 1 for timer snapshots; `captured_at` is Unix microseconds;
//!   `payload` is the record as JSON ([`Record`]); `crc` is the CRC-32 of the
//!   payload, because SQLite checks the structure of its pages but not their
//!   content.
//! - `dead_letters(seq, kind, captured_at, payload, crc, error, failed_at)`:
//!   records PostgreSQL rejected for good, or whose bytes were damaged, kept
//!   with the reason. Nothing is ever deleted from here by the daemon.
//! - `counters(name, value)`: captured, shipped, thinned and rejected
//!   totals. `captured_snapshots` and `captured_operation_events` are bumped
//!   in the transaction that appends the records, so together with the other
//!   totals they account for every record the spool ever took.
//! - `running_operations(operation_id, payload)`: the `started` event of
//!   every operation this daemon runs itself and has not ended yet, written
//!   in the transaction that appends the `started` event and deleted in the
//!   one that appends its final event. A row still here when the daemon
//!   starts is an operation a crash or kill interrupted: the daemon closes it
//!   as failed ([`Spool::running_operations`]), so no `operations` row is
//!   left `started` without a reason.
//! - `meta(key, value)`: `format = 1`; the shipper's standing error
//!   (`last_error`, and `last_error_at`: since when), removed when a batch
//!   ships again.
//!
//! Captures the spool could not take (a full disk) are counted as
//! `lost:<reason>` rows of `counters`. The file itself is what is full, so
//! [`SpoolHandle`](super::SpoolHandle) keeps the count in memory while it
//! cannot be written and adds it here at the first write that succeeds (it
//! tries after every failure, and with every append). A daemon killed while
//! the disk is still full loses that count with the captures: the log's
//! summary line is then the only record. A side file would not help: it
//! lives on the same full disk.
//!
//! # Invariants
//!
//! - A record is durable before `append` returns, and is deleted only by
//!   `remove` after the shipper saw PostgreSQL commit it. A crash in between
//!   ships it again; the shipper's statements are idempotent.
//! - When the spool holds more than its limit, only timer snapshots are
//!   thinned (to one per minute, then per ten minutes, then per hour); then
//!   new timer snapshots are refused and counted. Operation events and event
//!   snapshots are always kept. Operations never reference timer snapshots,
//!   so thinning never breaks a link.
//! - A damaged file is never silently replaced: on open it is checked
//!   (`PRAGMA quick_check`); a damaged one is moved aside, every row that can
//!   still be read is copied into a fresh spool (rows whose checksum fails go
//!   to `dead_letters`), and the damage is reported. A record whose checksum
//!   fails later is moved to `dead_letters` when read, never shipped.
//! - A full disk is an error returned to the caller ([`SpoolError::DiskFull`]),
//!   not a crash; the next append tries again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};
use serde::Serialize;

use super::record::{OperationEvent, Record};

/// Current file format.
pub const FORMAT: i64 = 1;
const KIND_STATE: i64 = 1;
const KIND_OPERATION: i64 = 2;
/// Thinning steps: keep one timer snapshot per bucket of this many seconds.
const THIN_BUCKETS: [i64; 3] = [60, 600, 3600];

/// Errors of the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The disk (or the SQLite page limit) is full: nothing was written.
    #[error("spool {path}: disk full, the record was not captured ({detail})")]
    DiskFull {
        /// Spool file.
        path: PathBuf,
        /// SQLite's message.
        detail: String,
    },
    /// The spool is over its size limit and the record is a timer snapshot.
    #[error(
        "spool {path}: over its limit of {limit} bytes even after thinning; timer snapshot refused"
    )]
    Full {
        /// Spool file.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// The file could not be opened or created.
    #[error("spool {path}: cannot open: {detail}")]
    Open {
        /// Spool file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The file is a spool of another format.
    #[error("spool {path}: format {found} is not supported (this daemon writes format {FORMAT})")]
    Format {
        /// Spool file.
        path: PathBuf,
        /// The format found.
        found: String,
    },
    /// Any other SQLite error.
    #[error("spool {path}: {detail}")]
    Sqlite {
        /// Spool file.
        path: PathBuf,
        /// SQLite's message.
        detail: String,
    },
    /// A record could not be encoded (never expected).
    #[error("spool: cannot encode a record: {0}")]
    Encode(String),
}

/// Damage found when opening, and what was saved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Damage {
    /// What was wrong.
    pub problem: String,
    /// Where the damaged file was moved.
    pub moved_to: PathBuf,
    /// Records copied into the fresh spool.
    pub salvaged: u64,
    /// Rows whose checksum failed, kept in `dead_letters`.
    pub corrupt: u64,
    /// Dead letters copied over.
    pub dead_letters: u64,
    /// Sequence numbers between the first and last readable record that
    /// could not be read (lower bound of what was lost).
    pub missing: u64,
}

/// A record read back from the spool.
#[derive(Debug, Clone, PartialEq)]
pub struct Spooled {
    /// Its sequence number.
    pub seq: i64,
    /// The record.
    pub record: Record,
}

/// Totals kept in the spool.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SpoolStatus {
    /// Records waiting to be shipped.
    pub backlog: u64,
    /// Of which operation events.
    pub backlog_operations: u64,
    /// Capture time of the oldest waiting record.
    pub oldest: Option<DateTime<Utc>>,
    /// Records in the dead-letter table.
    pub dead_letters: u64,
    /// machine_state rows captured since the spool was created.
    pub captured_snapshots: u64,
    /// Operation events captured since the spool was created.
    pub captured_operations: u64,
    /// Operations this daemon started and has not ended (see the module doc).
    pub running_operations: u64,
    /// machine_state rows shipped since the spool was created.
    pub shipped_snapshots: u64,
    /// Operation events shipped since the spool was created.
    pub shipped_operations: u64,
    /// Timer snapshots thinned away because the spool was full.
    pub thinned: u64,
    /// Timer snapshots refused because the spool was full after thinning.
    pub rejected: u64,
    /// The shipper's standing error and since when (RFC 3339), if any;
    /// cleared when a batch ships again.
    pub last_error: Option<(String, String)>,
    /// Captures the spool could not take (full disk), in total.
    pub lost_captures: u64,
    /// The same by reason (`disk_full`, `spool_error`).
    pub lost: std::collections::BTreeMap<String, u64>,
    /// Bytes in use.
    pub used_bytes: u64,
    /// The configured limit.
    pub limit_bytes: u64,
}

impl SpoolStatus {
    /// How long the oldest waiting record has waited, at `now`.
    pub fn oldest_age(&self, now: DateTime<Utc>) -> Option<Duration> {
        self.oldest.map(|o| (now - o).to_std().unwrap_or_default())
    }
}

/// The spool. Blocking: call it from a blocking thread.
pub struct Spool {
    conn: Connection,
    path: PathBuf,
    limit: u64,
    /// Appends since the last size check (checking is a pragma round trip).
    since_check: u32,
    /// Whether the last check found the spool over its limit after thinning.
    over_limit: bool,
}

fn sqlite_err(path: &Path, e: rusqlite::Error) -> SpoolError {
    // SQLite reports ENOSPC from its writes as SQLITE_FULL.
    if let rusqlite::Error::SqliteFailure(f, ref msg) = e {
        if f.code == ErrorCode::DiskFull {
            return SpoolError::DiskFull {
                path: path.to_path_buf(),
                detail: msg.clone().unwrap_or_else(|| e.to_string()),
            };
        }
    }
    SpoolError::Sqlite {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS records (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind INTEGER NOT NULL,
        thinnable INTEGER NOT NULL,
        captured_at INTEGER NOT NULL,
        payload BLOB NOT NULL,
        crc INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS records_thinnable ON records (captured_at) WHERE thinnable = 1;
    CREATE TABLE IF NOT EXISTS dead_letters (
        seq INTEGER PRIMARY KEY,
        kind INTEGER NOT NULL,
        captured_at INTEGER NOT NULL,
        payload BLOB NOT NULL,
        crc INTEGER NOT NULL,
        error TEXT NOT NULL,
        failed_at INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS running_operations (operation_id TEXT PRIMARY KEY, payload BLOB NOT NULL);
";

impl Spool {
    /// Opens (or creates) the spool at `path` with a size limit of `limit`
    /// bytes. A damaged file is moved aside and salvaged; the damage is returned.
    pub fn open(path: &Path, limit: u64) -> Result<(Spool, Option<Damage>), SpoolError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| SpoolError::Open {
                path: path.to_path_buf(),
                detail: format!("cannot create {}: {e}", dir.display()),
            })?;
        }
        match Self::open_checked(path, limit) {
            Ok(spool) => Ok((spool, None)),
            Err(Problem::Fatal(e)) => Err(e),
            Err(Problem::Damaged(problem)) => {
                let damage = Self::salvage(path, limit, problem)?;
                let spool = Self::open_checked(path, limit).map_err(|p| match p {
                    Problem::Fatal(e) => e,
                    Problem::Damaged(d) => SpoolError::Open {
                        path: path.to_path_buf(),
                        detail: format!("the fresh spool is damaged too: {d}"),
                    },
                })?;
                Ok((spool, Some(damage)))
            }
        }
    }

    /// Opens the spool read-only, for status reports next to a running daemon.
    pub fn open_read_only(path: &Path) -> Result<Spool, SpoolError> {
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| {
                SpoolError::Open {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                }
            })?;
        Ok(Spool {
            conn,
            path: path.to_path_buf(),
            limit: 0,
            since_check: 0,
            over_limit: false,
        })
    }

    fn open_checked(path: &Path, limit: u64) -> Result<Spool, Problem> {
        let fatal = |e: rusqlite::Error| Problem::Fatal(sqlite_err(path, e));
        let conn = match Connection::open(path) {
            Ok(c) => c,
            Err(e) if is_damage(&e) => return Err(Problem::Damaged(e.to_string())),
            Err(e) => {
                return Err(Problem::Fatal(SpoolError::Open {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                }))
            }
        };
        let setup = (|| -> rusqlite::Result<String> {
            conn.busy_timeout(Duration::from_secs(5))?;
            let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Ok(format!("journal mode {mode}"));
            }
            conn.pragma_update(None, "synchronous", "FULL")?;
            let check: String = conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0))?;
            Ok(check)
        })();
        match setup {
            Ok(check) if check == "ok" => {}
            Ok(check) if check.starts_with("journal mode") => {
                return Err(Problem::Fatal(SpoolError::Open {
                    path: path.to_path_buf(),
                    detail: format!("cannot use write-ahead logging ({check})"),
                }))
            }
            Ok(check) => return Err(Problem::Damaged(format!("integrity check: {check}"))),
            Err(e) if is_damage(&e) => return Err(Problem::Damaged(e.to_string())),
            Err(e) => return Err(fatal(e)),
        }
        if let Err(e) = conn.execute_batch(SCHEMA) {
            return Err(if is_damage(&e) {
                Problem::Damaged(e.to_string())
            } else {
                fatal(e)
            });
        }
        let format: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'format'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(fatal)?;
        match format {
            None => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('format', ?1)",
                    [FORMAT.to_string()],
                )
                .map_err(fatal)?;
            }
            Some(f) if f == FORMAT.to_string() => {}
            Some(found) => {
                return Err(Problem::Fatal(SpoolError::Format {
                    path: path.to_path_buf(),
                    found,
                }))
            }
        }
        Ok(Spool {
            conn,
            path: path.to_path_buf(),
            limit,
            since_check: 0,
            over_limit: false,
        })
    }

    /// Moves a damaged file aside and copies what can be read into a fresh one.
    fn salvage(path: &Path, limit: u64, problem: String) -> Result<Damage, SpoolError> {
        let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
        let moved_to = path.with_extension(format!("damaged-{stamp}"));
        let err = |detail: String| SpoolError::Open {
            path: path.to_path_buf(),
            detail,
        };
        tracing::error!(spool = %path.display(), %problem, moved_to = %moved_to.display(), "spool file is damaged: salvaging");
        std::fs::rename(path, &moved_to)
            .map_err(|e| err(format!("cannot move the damaged file aside: {e}")))?;
        for suffix in ["-wal", "-shm"] {
            let side = PathBuf::from(format!("{}{suffix}", path.display()));
            if side.exists() {
                let to = PathBuf::from(format!("{}{suffix}", moved_to.display()));
                std::fs::rename(&side, &to)
                    .map_err(|e| err(format!("cannot move {}: {e}", side.display())))?;
            }
        }
        let fresh = Self::open_checked(path, limit).map_err(|p| match p {
            Problem::Fatal(e) => e,
            Problem::Damaged(d) => err(format!("cannot create a fresh spool: {d}")),
        })?;
        let mut damage = Damage {
            problem,
            moved_to: moved_to.clone(),
            salvaged: 0,
            corrupt: 0,
            dead_letters: 0,
            missing: 0,
        };
        // Read-write (never create): SQLite may need to replay the moved WAL
        // or create a shared-memory index to read it at all. The copy aside is
        // ours; only SQLite's own recovery writes to it.
        let old = match Connection::open_with_flags(&moved_to, OpenFlags::SQLITE_OPEN_READ_WRITE) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "the damaged spool cannot be opened at all: nothing salvaged");
                return Ok(damage);
            }
        };
        // With writable_schema SQLite reads a file shorter than its header
        // says (a truncation) instead of refusing it outright.
        let _ = old.pragma_update(None, "writable_schema", "ON");
        let rows = read_rows_tolerantly(
            &old,
            "records",
            "seq, kind, thinnable, captured_at, payload, crc, NULL",
        );
        let (mut first, mut last) = (None, None);
        for row in &rows {
            first = first.or(Some(row.seq));
            last = Some(row.seq);
            let intact = crc32fast::hash(&row.payload) as i64 == row.crc
                && serde_json::from_slice::<Record>(&row.payload).is_ok();
            let r = if intact {
                damage.salvaged += 1;
                fresh.conn.execute(
                    "INSERT INTO records (seq, kind, thinnable, captured_at, payload, crc) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![row.seq, row.kind, row.thinnable, row.captured_at, row.payload, row.crc],
                )
            } else {
                damage.corrupt += 1;
                fresh.insert_dead(
                    row.seq,
                    row.kind,
                    row.captured_at,
                    &row.payload,
                    row.crc,
                    "damaged in the spool file (checksum mismatch)",
                )
            };
            r.map_err(|e| sqlite_err(path, e))?;
        }
        if let (Some(f), Some(l)) = (first, last) {
            damage.missing = (l - f + 1) as u64 - rows.len() as u64;
        }
        for row in read_rows_tolerantly(
            &old,
            "dead_letters",
            "seq, kind, 0, captured_at, payload, crc, error",
        ) {
            damage.dead_letters += 1;
            fresh
                .insert_dead(
                    row.seq,
                    row.kind,
                    row.captured_at,
                    &row.payload,
                    row.crc,
                    row.error.as_deref().unwrap_or("unknown"),
                )
                .map_err(|e| sqlite_err(path, e))?;
        }
        // Keep seq numbers rising past everything the old file handed out.
        if let Some(l) = last {
            let _ = fresh.conn.execute(
                "INSERT OR REPLACE INTO sqlite_sequence (name, seq) VALUES ('records', MAX(?1, COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'records'), 0)))",
                [l],
            );
        }
        tracing::error!(
            salvaged = damage.salvaged,
            corrupt = damage.corrupt,
            missing = damage.missing,
            "spool salvaged; the damaged file is kept for inspection"
        );
        Ok(damage)
    }

    fn insert_dead(
        &self,
        seq: i64,
        kind: i64,
        captured_at: i64,
        payload: &[u8],
        crc: i64,
        error: &str,
    ) -> rusqlite::Result<usize> {
        self.conn.execute(
            "INSERT OR REPLACE INTO dead_letters (seq, kind, captured_at, payload, crc, error, failed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![seq, kind, captured_at, payload, crc, error, now_micros()],
        )
    }

    /// The spool file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `records` in one transaction; when this returns `Ok` they are
    /// on disk. Returns their sequence numbers.
    pub fn append(&mut self, records: &[Record]) -> Result<Vec<i64>, SpoolError> {
        self.append_inner(records, false)
    }

    /// [`Spool::append`] for the events of an operation the daemon runs
    /// itself: a `started` event is also kept in `running_operations` until
    /// its final event is appended, so that a restart can close it.
    pub fn append_run_here(&mut self, records: &[Record]) -> Result<Vec<i64>, SpoolError> {
        self.append_inner(records, true)
    }

    fn append_inner(&mut self, records: &[Record], run_here: bool) -> Result<Vec<i64>, SpoolError> {
        let path = self.path.clone();
        if records.iter().any(Record::thinnable) {
            // Checked every 64 timer snapshots (a few pragmas each); small
            // spools, as in tests, are checked every time.
            self.since_check += 1;
            if self.since_check >= 64 || self.limit < 16 << 20 {
                self.since_check = 0;
                self.enforce_limit()?;
                self.over_limit = self.limit > 0 && self.used_bytes()? > self.limit;
            }
        }
        let refuse_thinnable = self.over_limit;
        let tx = self.conn.transaction().map_err(|e| sqlite_err(&path, e))?;
        let mut seqs = Vec::with_capacity(records.len());
        let mut rejected = 0;
        for r in records {
            if refuse_thinnable && r.thinnable() {
                rejected += 1;
                continue;
            }
            let payload = serde_json::to_vec(r).map_err(|e| SpoolError::Encode(e.to_string()))?;
            let crc = crc32fast::hash(&payload) as i64;
            let kind = match r {
                Record::MachineState { .. } => KIND_STATE,
                Record::Operation { .. } => KIND_OPERATION,
            };
            if let Record::Operation { event } = r {
                let id = event.operation_id.to_string();
                // Any final event ends the operation, whoever appends it.
                let sql = if event.operation_status.is_terminal() {
                    tx.execute(
                        "DELETE FROM running_operations WHERE operation_id = ?1",
                        [&id],
                    )
                } else if run_here {
                    tx.execute(
                        "INSERT OR REPLACE INTO running_operations (operation_id, payload) VALUES (?1, ?2)",
                        params![id, payload],
                    )
                } else {
                    Ok(0)
                };
                sql.map_err(|e| sqlite_err(&path, e))?;
            }
            tx.execute(
                "INSERT INTO records (kind, thinnable, captured_at, payload, crc) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![kind, r.thinnable() as i64, r.recorded_at().timestamp_micros(), payload, crc],
            )
            .map_err(|e| sqlite_err(&path, e))?;
            seqs.push(tx.last_insert_rowid());
        }
        if rejected > 0 {
            bump(&tx, "rejected", rejected).map_err(|e| sqlite_err(&path, e))?;
        }
        let states = records
            .iter()
            .filter(|r| matches!(r, Record::MachineState { .. }))
            .count() as i64
            - rejected;
        let ops = records.len() as i64 - rejected - states;
        bump(&tx, "captured_snapshots", states).map_err(|e| sqlite_err(&path, e))?;
        bump(&tx, "captured_operation_events", ops).map_err(|e| sqlite_err(&path, e))?;
        tx.commit().map_err(|e| sqlite_err(&path, e))?;
        if rejected > 0 {
            tracing::error!(spool = %path.display(), rejected, limit = self.limit, "SPOOL FULL: timer snapshots refused");
            if seqs.is_empty() {
                return Err(SpoolError::Full {
                    path,
                    limit: self.limit,
                });
            }
        }
        Ok(seqs)
    }

    /// Bytes the spool's live pages take (free pages do not count: SQLite reuses them).
    pub fn used_bytes(&self) -> Result<u64, SpoolError> {
        let q = |p: &str| -> Result<i64, SpoolError> {
            self.conn
                .query_row(&format!("PRAGMA {p}"), [], |r| r.get(0))
                .map_err(|e| sqlite_err(&self.path, e))
        };
        let pages = q("page_count")? - q("freelist_count")?;
        Ok((pages.max(0) as u64) * q("page_size")?.max(0) as u64)
    }

    /// Thins timer snapshots while the spool is over its limit.
    fn enforce_limit(&mut self) -> Result<(), SpoolError> {
        if self.limit == 0 || self.used_bytes()? <= self.limit {
            return Ok(());
        }
        let path = self.path.clone();
        for bucket in THIN_BUCKETS {
            let n = self
                .conn
                .execute(
                    "DELETE FROM records WHERE thinnable = 1 AND seq NOT IN (
                         SELECT MIN(seq) FROM records WHERE thinnable = 1 GROUP BY captured_at / ?1)",
                    [bucket * 1_000_000],
                )
                .map_err(|e| sqlite_err(&path, e))?;
            if n > 0 {
                bump(&self.conn, "thinned", n as i64).map_err(|e| sqlite_err(&path, e))?;
                tracing::error!(
                    spool = %path.display(),
                    thinned = n,
                    keep_one_per_secs = bucket,
                    limit = self.limit,
                    "SPOOL FULL: timer snapshots thinned (operations and event snapshots are kept)"
                );
            }
            if self.used_bytes()? <= self.limit {
                break;
            }
        }
        Ok(())
    }

    /// Up to `max` of the oldest records, in order. Records whose bytes are
    /// damaged are moved to the dead letters on the way, never returned.
    pub fn peek(&mut self, max: usize) -> Result<Vec<Spooled>, SpoolError> {
        self.peek_after(0, max)
    }

    /// Like [`Spool::peek`], for records after sequence number `after` (the
    /// shipper reads ahead while the previous batch is still being deleted).
    pub fn peek_after(&mut self, after: i64, max: usize) -> Result<Vec<Spooled>, SpoolError> {
        let path = self.path.clone();
        let rows: Vec<(i64, i64, i64, Vec<u8>, i64)> = {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT seq, kind, captured_at, payload, crc FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2")
                .map_err(|e| sqlite_err(&path, e))?;
            let it = stmt
                .query_map([after, max as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .map_err(|e| sqlite_err(&path, e))?;
            it.collect::<Result<_, _>>()
                .map_err(|e| sqlite_err(&path, e))?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (seq, kind, captured_at, payload, crc) in rows {
            let decoded = if crc32fast::hash(&payload) as i64 != crc {
                Err("damaged in the spool file (checksum mismatch)".to_string())
            } else {
                serde_json::from_slice::<Record>(&payload)
                    .map_err(|e| format!("cannot decode: {e}"))
            };
            match decoded {
                Ok(record) => out.push(Spooled { seq, record }),
                Err(why) => {
                    tracing::error!(spool = %path.display(), seq, %why, "spooled record moved to dead letters");
                    let tx = self.conn.transaction().map_err(|e| sqlite_err(&path, e))?;
                    tx.execute(
                        "INSERT OR REPLACE INTO dead_letters (seq, kind, captured_at, payload, crc, error, failed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![seq, kind, captured_at, payload, crc, why, now_micros()],
                    )
                    .and_then(|_| tx.execute("DELETE FROM records WHERE seq = ?1", [seq]))
                    .map_err(|e| sqlite_err(&path, e))?;
                    tx.commit().map_err(|e| sqlite_err(&path, e))?;
                }
            }
        }
        Ok(out)
    }

    /// Deletes records PostgreSQL has committed and counts them as shipped.
    pub fn remove(&mut self, shipped: &[Spooled]) -> Result<(), SpoolError> {
        let path = self.path.clone();
        let (Some(first), Some(last)) = (shipped.first(), shipped.last()) else {
            return Ok(());
        };
        let states = shipped
            .iter()
            .filter(|s| matches!(s.record, Record::MachineState { .. }))
            .count() as i64;
        let ops = shipped.len() as i64 - states;
        let tx = self.conn.transaction().map_err(|e| sqlite_err(&path, e))?;
        let contiguous = shipped.windows(2).all(|w| w[0].seq < w[1].seq);
        if contiguous {
            // `peek` returned every row between the first and the last, so the
            // range holds exactly this batch: one statement instead of one per row.
            tx.execute(
                "DELETE FROM records WHERE seq BETWEEN ?1 AND ?2",
                [first.seq, last.seq],
            )
            .map_err(|e| sqlite_err(&path, e))?;
        } else {
            let mut del = tx
                .prepare_cached("DELETE FROM records WHERE seq = ?1")
                .map_err(|e| sqlite_err(&path, e))?;
            for s in shipped {
                del.execute([s.seq]).map_err(|e| sqlite_err(&path, e))?;
            }
        }
        bump(&tx, "shipped_snapshots", states).map_err(|e| sqlite_err(&path, e))?;
        bump(&tx, "shipped_operations", ops).map_err(|e| sqlite_err(&path, e))?;
        tx.commit().map_err(|e| sqlite_err(&path, e))
    }

    /// Moves one record to the dead letters with the reason PostgreSQL gave.
    pub fn dead_letter(&mut self, seq: i64, error: &str) -> Result<(), SpoolError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| sqlite_err(&path, e))?;
        tx.execute(
            "INSERT OR REPLACE INTO dead_letters (seq, kind, captured_at, payload, crc, error, failed_at)
             SELECT seq, kind, captured_at, payload, crc, ?2, ?3 FROM records WHERE seq = ?1",
            params![seq, error, now_micros()],
        )
        .and_then(|_| tx.execute("DELETE FROM records WHERE seq = ?1", [seq]))
        .map_err(|e| sqlite_err(&path, e))?;
        tx.commit().map_err(|e| sqlite_err(&path, e))
    }

    /// Keeps the shipper's latest error (as of now) for status reports.
    pub fn set_last_error(&self, error: &str) -> Result<(), SpoolError> {
        self.set_last_error_since(error, Utc::now())
    }

    /// Keeps the shipper's standing error (and since when it stands) for
    /// status reports.
    pub fn set_last_error_since(
        &self,
        error: &str,
        since: DateTime<Utc>,
    ) -> Result<(), SpoolError> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES ('last_error', ?1), ('last_error_at', ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![error, since.to_rfc3339()],
            )
            .map(|_| ())
            .map_err(|e| sqlite_err(&self.path, e))
    }

    /// Forgets the shipper's error: shipping works again.
    pub fn clear_last_error(&self) -> Result<(), SpoolError> {
        self.conn
            .execute(
                "DELETE FROM meta WHERE key IN ('last_error', 'last_error_at')",
                [],
            )
            .map(|_| ())
            .map_err(|e| sqlite_err(&self.path, e))
    }

    /// Adds captures that could not be written, by reason, to the totals.
    pub fn add_lost(
        &mut self,
        lost: &std::collections::BTreeMap<String, u64>,
    ) -> Result<(), SpoolError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| sqlite_err(&path, e))?;
        for (reason, n) in lost {
            let n = i64::try_from(*n).unwrap_or(i64::MAX);
            bump(&tx, &format!("lost:{reason}"), n).map_err(|e| sqlite_err(&path, e))?;
        }
        tx.commit().map_err(|e| sqlite_err(&path, e))
    }

    /// The dead letters: sequence number, reason and record (if it still decodes).
    pub fn dead_letters(&self) -> Result<Vec<(i64, String, Option<Record>)>, SpoolError> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, error, payload FROM dead_letters ORDER BY seq")
            .map_err(|e| sqlite_err(&self.path, e))?;
        let rows = stmt
            .query_map([], |r| {
                let payload: Vec<u8> = r.get(2)?;
                Ok((r.get(0)?, r.get(1)?, serde_json::from_slice(&payload).ok()))
            })
            .map_err(|e| sqlite_err(&self.path, e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| sqlite_err(&self.path, e))
    }

    /// The `started` events of the operations this daemon ran itself and
    /// never ended (see the module doc): at start, each was interrupted.
    /// A payload that no longer decodes is skipped with an error logged: the
    /// operation cannot be closed without its row.
    pub fn running_operations(&self) -> Result<Vec<OperationEvent>, SpoolError> {
        let mut stmt = self
            .conn
            .prepare("SELECT operation_id, payload FROM running_operations ORDER BY rowid")
            .map_err(|e| sqlite_err(&self.path, e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(|e| sqlite_err(&self.path, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sqlite_err(&self.path, e))?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, payload) in rows {
            match serde_json::from_slice::<Record>(&payload) {
                Ok(Record::Operation { event }) => out.push(event),
                Ok(other) => {
                    tracing::error!(operation_id = %id, record = %other.describe(), "running_operations holds a record that is not an operation event; ignored")
                }
                Err(e) => {
                    tracing::error!(operation_id = %id, error = %e, "running_operations holds an event that does not decode; the operation cannot be closed")
                }
            }
        }
        Ok(out)
    }

    /// Current totals.
    pub fn status(&self) -> Result<SpoolStatus, SpoolError> {
        let e = |e| sqlite_err(&self.path, e);
        let (backlog, ops, oldest): (i64, i64, Option<i64>) = self
            .conn
            .query_row(
                "SELECT count(*), COALESCE(SUM(kind = 2), 0), MIN(captured_at) FROM records",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(e)?;
        let dead: i64 = self
            .conn
            .query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0))
            .map_err(e)?;
        let counter = |name: &str| -> Result<u64, SpoolError> {
            let v: Option<i64> = self
                .conn
                .query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(|err| sqlite_err(&self.path, err))?;
            Ok(v.unwrap_or(0).max(0) as u64)
        };
        let lost: std::collections::BTreeMap<String, u64> = {
            let mut stmt = self
                .conn
                .prepare("SELECT name, value FROM counters WHERE name LIKE 'lost:%'")
                .map_err(e)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(e)?;
            let mut lost = std::collections::BTreeMap::new();
            for row in rows {
                let (name, n) = row.map_err(e)?;
                let reason = name.strip_prefix("lost:").unwrap_or(&name).to_string();
                lost.insert(reason, n.max(0) as u64);
            }
            lost
        };
        Ok(SpoolStatus {
            lost_captures: lost.values().sum(),
            lost,
            backlog: backlog as u64,
            backlog_operations: ops as u64,
            oldest: oldest.and_then(DateTime::from_timestamp_micros),
            dead_letters: dead as u64,
            captured_snapshots: counter("captured_snapshots")?,
            captured_operations: counter("captured_operation_events")?,
            running_operations: self
                .conn
                .query_row("SELECT count(*) FROM running_operations", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map_err(e)?
                .max(0) as u64,
            shipped_snapshots: counter("shipped_snapshots")?,
            shipped_operations: counter("shipped_operations")?,
            thinned: counter("thinned")?,
            rejected: counter("rejected")?,
            last_error: {
                let meta = |k: &str| -> Result<Option<String>, SpoolError> {
                    self.conn
                        .query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
                        .optional()
                        .map_err(|err| sqlite_err(&self.path, err))
                };
                meta("last_error")?.zip(meta("last_error_at")?)
            },
            used_bytes: self.used_bytes()?,
            limit_bytes: self.limit,
        })
    }

    /// Limits the file to `pages` SQLite pages (tests of a full disk).
    pub fn set_max_pages(&self, pages: u64) -> Result<(), SpoolError> {
        self.conn
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
            .map_err(|e| sqlite_err(&self.path, e))
    }
}

fn bump(conn: &Connection, name: &str, by: i64) -> rusqlite::Result<()> {
    if by == 0 {
        return Ok(());
    }
    conn.execute(
        "INSERT INTO counters (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        params![name, by],
    )
    .map(|_| ())
}

enum Problem {
    Fatal(SpoolError),
    Damaged(String),
}

fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _) if matches!(f.code, ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

struct RawRow {
    seq: i64,
    kind: i64,
    thinnable: i64,
    captured_at: i64,
    payload: Vec<u8>,
    crc: i64,
    error: Option<String>,
}

/// Reads every row of `table` that can still be read, in `seq` order. A
/// damaged b-tree stops a scan part-way: the scan resumes past the damage,
/// skipping forward in growing steps, a bounded number of times.
fn read_rows_tolerantly(conn: &Connection, table: &str, cols: &str) -> Vec<RawRow> {
    let mut out = Vec::new();
    let max_seq: i64 = conn
        .query_row(&format!("SELECT MAX(seq) FROM {table}"), [], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .ok()
        .flatten()
        .unwrap_or(i64::MAX / 2);
    let mut after = i64::MIN;
    let mut skip = 1i64;
    for _attempt in 0..10_000 {
        let sql = format!("SELECT {cols} FROM {table} WHERE seq > ?1 ORDER BY seq");
        let mut stmt = match conn.prepare(&sql) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(table, error = %e, "salvage: cannot read the table");
                break;
            }
        };
        let mut rows = match stmt.query([after]) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(table, error = %e, after, "salvage: scan failed");
                break;
            }
        };
        let mut progressed = false;
        let mut failed = false;
        loop {
            match rows.next() {
                Ok(Some(r)) => {
                    let row = (|| -> rusqlite::Result<RawRow> {
                        Ok(RawRow {
                            seq: r.get(0)?,
                            kind: r.get(1)?,
                            thinnable: r.get(2)?,
                            captured_at: r.get(3)?,
                            payload: r.get(4)?,
                            crc: r.get(5)?,
                            error: r.get(6)?,
                        })
                    })();
                    match row {
                        Ok(row) => {
                            after = row.seq;
                            out.push(row);
                            progressed = true;
                            skip = 1;
                        }
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(table, error = %e, after, "salvage: scan stopped at damage");
                    failed = true;
                    break;
                }
            }
        }
        if !failed {
            break;
        }
        if !progressed {
            if after == i64::MIN {
                after = 0;
            }
            after = after.saturating_add(skip);
            skip = skip.saturating_mul(2);
            if after > max_seq {
                break;
            }
        }
    }
    out
}

/// A spool status as lines of text for operators.
pub fn render_status(st: &SpoolStatus, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<22} {v}\n"));
    line(
        "backlog",
        format!(
            "{} records ({} operation events)",
            st.backlog, st.backlog_operations
        ),
    );
    line(
        "oldest unshipped",
        match (st.oldest, st.oldest_age(now)) {
            (Some(t), Some(age)) => format!(
                "{} ({} ago)",
                t.to_rfc3339(),
                humantime::format_duration(Duration::from_secs(age.as_secs()))
            ),
            _ => "none".into(),
        },
    );
    line("dead letters", st.dead_letters.to_string());
    line(
        "captured",
        format!(
            "{} snapshots, {} operation events",
            st.captured_snapshots, st.captured_operations
        ),
    );
    line("running operations", st.running_operations.to_string());
    line(
        "shipped",
        format!(
            "{} snapshots, {} operation events",
            st.shipped_snapshots, st.shipped_operations
        ),
    );
    line(
        "thinned / refused",
        format!("{} / {} timer snapshots", st.thinned, st.rejected),
    );
    line(
        "lost captures",
        if st.lost.is_empty() {
            "none".into()
        } else {
            let why: Vec<String> = st.lost.iter().map(|(k, n)| format!("{k}: {n}")).collect();
            format!("{} ({})", st.lost_captures, why.join(", "))
        },
    );
    line(
        "size",
        format!("{} of {} bytes", st.used_bytes, st.limit_bytes),
    );
    line(
        "last shipping error",
        st.last_error
            .as_ref()
            .map_or_else(|| "none".into(), |(e, at)| format!("since {at}: {e}")),
    );
    out
}
