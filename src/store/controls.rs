//! Linking `machine_state` rows to audmon's `controls` rows (the audio
//! frames), in the two ways the design notes allow without an audmon change:
//!
//! - at snapshot time (`snapshot.link = latest`): [`ControlsCache`] answers
//!   "which is the newest `controls` row of this host, if recent enough?";
//! - afterwards, in batch: [`backfill`] sets `controls_id` of unlinked rows
//!   from the `controls` row of the same host nearest in time.
//!
//! # Why the snapshot-time lookup is a cache
//!
//! Snapshots are captured on a timer and on events, and a capture only ever
//! touches the local spool, so that a slow or absent PostgreSQL never delays
//! or loses one. Asking PostgreSQL for the newest `controls` row at capture
//! time would break that. Instead a background task asks every `refresh` and
//! publishes the answer; [`ControlsCache::lookup`] only reads the last
//! answer and never awaits. The price is staleness of up to `refresh` (plus
//! one query): the row returned may not be the very newest one, which is why
//! `lookup` still checks the row's age against the snapshot's time, and why
//! the cache is emptied as soon as the database stops answering — an answer
//! from before an outage says nothing about audmon now.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{Client, Row};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::pg::{self, error_text};
use crate::backoff::Backoff;

/// The newest `controls` row of a host. Uses an index on
/// `controls(host, recorded_at)` when audmon has one (see [`backfill`]).
const NEWEST: &str =
    "SELECT controls_id, recorded_at FROM controls WHERE host = $1 ORDER BY recorded_at DESC LIMIT 1";

/// Below this the refresh would hammer the server for no gain.
const MIN_REFRESH: Duration = Duration::from_millis(10);

/// A refresh query that takes longer than this (or than `refresh`, if
/// longer) counts as an outage: the session is dropped and reopened.
const MIN_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// First reconnect delay is `refresh`, clamped to this range.
const BACKOFF_INITIAL_MAX: Duration = Duration::from_secs(1);

/// Longest pause between reconnect attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What the background task of [`spawn_controls_cache`] last found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlsCacheStatus {
    /// A session is open and its last query (if any yet) succeeded.
    pub connected: bool,
    /// The most recent problem: a connection or query error, or a
    /// `controls_id` that cannot be linked. Kept after recovery, so that a
    /// status report still shows what went wrong last.
    pub last_error: Option<String>,
    /// The newest `controls` row of the host as (controls_id, recorded_at);
    /// `None` when there is none, when its id cannot be linked, or while the
    /// database does not answer.
    pub newest: Option<(Uuid, DateTime<Utc>)>,
}

/// The newest `controls` row of this host as a background task last read it,
/// for linking snapshots at capture time. Cheap to clone; every clone sees
/// the same task.
#[derive(Debug, Clone)]
pub struct ControlsCache {
    rx: watch::Receiver<ControlsCacheStatus>,
}

impl ControlsCache {
    /// A cache with no task behind it: `lookup` always returns `None`. For
    /// callers that need a cache where linking is off, and for tests.
    pub fn disabled() -> ControlsCache {
        let (_tx, rx) = watch::channel(ControlsCacheStatus::default());
        ControlsCache { rx }
    }

    /// The `controls_id` to store in a snapshot taken at `at`: the newest
    /// known `controls` row of the host, if its `recorded_at` is within
    /// `max_age` of `at` (either side: audmon's clock may run slightly ahead,
    /// but a row far in the future of the snapshot is not its frame).
    ///
    /// Never awaits and never waits on PostgreSQL: it reads what the task
    /// last published, under a lock that the task holds only to replace a
    /// few fields. While the database does not answer it returns `None`.
    pub fn lookup(&self, at: DateTime<Utc>, max_age: Duration) -> Option<Uuid> {
        let newest = self.rx.borrow().newest;
        fresh(newest, at, max_age)
    }

    /// What the task last published.
    pub fn status(&self) -> ControlsCacheStatus {
        self.rx.borrow().clone()
    }

    /// Waits until the status satisfies `pred` and returns it, or `None`
    /// after `timeout` or when the task has ended without satisfying it.
    /// Checks the current status first.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&ControlsCacheStatus) -> bool,
    ) -> Option<ControlsCacheStatus> {
        let mut rx = self.rx.clone();
        let found = tokio::time::timeout(timeout, rx.wait_for(|s| pred(s)))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|status| status.clone());
        found
    }
}

/// `newest`'s id if it was recorded within `max_age` of `at`.
fn fresh(
    newest: Option<(Uuid, DateTime<Utc>)>,
    at: DateTime<Utc>,
    max_age: Duration,
) -> Option<Uuid> {
    let (id, recorded_at) = newest?;
    let age = at.signed_duration_since(recorded_at);
    match TimeDelta::from_std(max_age) {
        Ok(max) => (age <= max && age >= -max).then_some(id),
        // Longer than any representable age: every row qualifies.
        Err(_) => Some(id),
    }
}

/// A `controls_id` held as text, if it is a UUID in the exact form the
/// shipper writes (`Uuid`'s hyphenated lower case). Any other spelling
/// (upper case, braces, no hyphens) would parse, but the shipper would write
/// a different string, which the foreign key to `controls` rejects.
fn linkable(text: &str) -> Option<Uuid> {
    Uuid::try_parse(text)
        .ok()
        .filter(|id| id.hyphenated().to_string() == text)
}

/// Starts the task that keeps a [`ControlsCache`] for `host`: it connects
/// with `pg` (reconnecting with capped backoff), then every `refresh`
/// (at least 10 ms) reads the host's newest `controls` row with a prepared
/// statement. `controls_id` may be UUID or a string type; string values
/// that are not UUIDs in canonical form are not linked (warned once per run
/// of such values). On any error the cache is emptied and a warning is
/// logged once per outage. The task ends on `shutdown`.
///
/// Pick `refresh` well below the `max_age` given to `lookup`: the row
/// returned may be up to `refresh` older than the newest one.
pub fn spawn_controls_cache(
    pg: impl Into<pg::PgTarget>,
    host: String,
    refresh: Duration,
    shutdown: CancellationToken,
) -> (ControlsCache, JoinHandle<()>) {
    let (tx, rx) = watch::channel(ControlsCacheStatus::default());
    let pg = pg.into();
    let refresher = Refresher {
        target: pg::describe(&pg),
        pg,
        host,
        refresh: refresh.max(MIN_REFRESH),
        shutdown,
        tx,
        in_outage: false,
        bad_id_warned: false,
    };
    (ControlsCache { rx }, tokio::spawn(refresher.run()))
}

/// How the `controls_id` column comes back.
#[derive(Debug, Clone, Copy)]
enum IdColumn {
    Uuid,
    Text,
}

impl IdColumn {
    fn of(ty: &Type) -> Result<IdColumn, String> {
        if *ty == Type::UUID {
            Ok(IdColumn::Uuid)
        } else if <String as FromSql>::accepts(ty) {
            Ok(IdColumn::Text)
        } else {
            Err(format!(
                "controls.controls_id has type {ty}; only uuid and string types can be linked"
            ))
        }
    }
}

struct Refresher {
    pg: pg::PgTarget,
    target: String,
    host: String,
    refresh: Duration,
    shutdown: CancellationToken,
    tx: watch::Sender<ControlsCacheStatus>,
    /// An outage has been warned about and has not ended yet.
    in_outage: bool,
    /// The current run of unlinkable ids has been warned about.
    bad_id_warned: bool,
}

impl Refresher {
    async fn run(mut self) {
        let initial = self.refresh.clamp(MIN_REFRESH, BACKOFF_INITIAL_MAX);
        let mut backoff = Backoff::new(initial, BACKOFF_MAX);
        let shutdown = self.shutdown.clone();
        loop {
            let error = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                error = self.session(&mut backoff) => error,
            };
            self.failed(error);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
        self.tx.send_if_modified(|s| {
            let changed = s.connected || s.newest.is_some();
            s.connected = false;
            s.newest = None;
            changed
        });
        tracing::debug!(host = %self.host, "controls cache stopped");
    }

    /// One session, refreshing until something fails; returns what failed.
    async fn session(&mut self, backoff: &mut Backoff) -> String {
        let client = match pg::connect(&self.pg).await {
            Ok(client) => client,
            Err(e) => return e.to_string(),
        };
        let stmt = match client.prepare(NEWEST).await {
            Ok(stmt) => stmt,
            Err(e) => return format!("preparing the controls query: {}", error_text(&e)),
        };
        let column = match stmt.columns().first().map(|c| IdColumn::of(c.type_())) {
            Some(Ok(column)) => column,
            Some(Err(e)) => return e,
            None => return "the controls query returned no columns".to_string(),
        };
        self.tx
            .send_if_modified(|s| !std::mem::replace(&mut s.connected, true));
        let query_timeout = self.refresh.max(MIN_QUERY_TIMEOUT);
        loop {
            // The parameters must outlive the query future, which the
            // timeout holds across an await.
            let host: &(dyn ToSql + Sync) = &self.host;
            let params = [host];
            let query = client.query_opt(&stmt, &params);
            let row = match tokio::time::timeout(query_timeout, query).await {
                Ok(Ok(row)) => row,
                Ok(Err(e)) => {
                    return format!("reading the newest controls row: {}", error_text(&e))
                }
                Err(_) => {
                    return format!(
                        "no answer to the controls query within {}",
                        humantime::format_duration(query_timeout)
                    )
                }
            };
            let newest = match row {
                Some(row) => match self.decode(&row, column) {
                    Ok(newest) => newest,
                    Err(e) => return e,
                },
                None => None,
            };
            self.tx.send_if_modified(|s| {
                let changed = s.newest != newest || !s.connected;
                s.newest = newest;
                s.connected = true;
                changed
            });
            if self.in_outage {
                tracing::info!(database = %self.target, host = %self.host, "controls cache: reading controls again");
                self.in_outage = false;
            }
            // Only a query that worked proves the server is back; resetting
            // on connect would retry at full speed a server that accepts
            // sessions but fails every query.
            backoff.reset();
            tokio::time::sleep(self.refresh).await;
        }
    }

    /// The row as (id, recorded_at), or `None` when it cannot be linked.
    fn decode(
        &mut self,
        row: &Row,
        column: IdColumn,
    ) -> Result<Option<(Uuid, DateTime<Utc>)>, String> {
        let decoding = |e: tokio_postgres::Error| {
            format!("decoding the newest controls row: {}", error_text(&e))
        };
        // Both columns are NOT NULL in audmon's schema; a NULL is just not linkable.
        let Some(recorded_at) = row
            .try_get::<_, Option<DateTime<Utc>>>(1)
            .map_err(decoding)?
        else {
            return Ok(None);
        };
        let id = match column {
            IdColumn::Uuid => row.try_get::<_, Option<Uuid>>(0).map_err(decoding)?,
            IdColumn::Text => {
                let Some(text) = row.try_get::<_, Option<String>>(0).map_err(decoding)? else {
                    return Ok(None);
                };
                let id = linkable(&text);
                if id.is_none() {
                    self.unlinkable(&text);
                    return Ok(None);
                }
                id
            }
        };
        if id.is_some() {
            self.bad_id_warned = false;
        }
        Ok(id.map(|id| (id, recorded_at)))
    }

    fn unlinkable(&mut self, text: &str) {
        let problem = format!(
            "the newest controls row of host {} has controls_id {text:?}, which is not a \
             UUID in canonical form (lower-case, hyphenated); snapshots are not linked to it",
            self.host
        );
        if self.bad_id_warned {
            tracing::debug!("{problem}");
        } else {
            tracing::warn!("{problem}");
            self.bad_id_warned = true;
        }
        self.tx.send_if_modified(|s| {
            let changed = s.last_error.as_deref() != Some(problem.as_str());
            s.last_error = Some(problem);
            changed
        });
    }

    /// The session failed: empty the cache, since an answer from before the
    /// failure may be arbitrarily old by the time the next one comes.
    fn failed(&mut self, error: String) {
        if self.in_outage {
            tracing::debug!(database = %self.target, host = %self.host, error = %error, "controls cache: still cannot read controls");
        } else {
            tracing::warn!(
                database = %self.target,
                host = %self.host,
                error = %error,
                "controls cache: cannot read controls; snapshots get no controls_id until \
                 PostgreSQL answers again"
            );
            self.in_outage = true;
        }
        self.tx.send_if_modified(|s| {
            let changed = s.connected
                || s.newest.is_some()
                || s.last_error.as_deref() != Some(error.as_str());
            s.connected = false;
            s.newest = None;
            s.last_error = Some(error);
            changed
        });
    }
}

/// A `machine_state` row that [`backfill`] linked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linked {
    /// The `machine_state` row.
    pub state_id: Uuid,
    /// The `controls_id` it now holds, as text (the column is UUID or a
    /// string type, following audmon's).
    pub controls_id: String,
    /// The snapshot's `recorded_at`.
    pub recorded_at: DateTime<Utc>,
    /// The `controls` row's `recorded_at` minus the snapshot's, in
    /// milliseconds (truncated toward zero): positive when the audio frame
    /// was recorded after the snapshot.
    pub offset_ms: i64,
}

/// Why [`backfill`] failed. Nothing was changed: the update is one
/// statement.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// PostgreSQL refused the statement or the session failed.
    #[error("PostgreSQL error while {action}: {cause}")]
    Database {
        /// What was being done.
        action: String,
        /// The cause with the server's own message, from [`error_text`].
        cause: String,
        /// The server's SQLSTATE; `None` when the server said nothing
        /// (connection refused, lost or closed).
        code: Option<SqlState>,
    },
}

/// Sets `controls_id` of a host's unlinked rows from the nearest `controls`
/// row of the same host.
///
/// For each candidate row the LATERAL subquery takes at most two `controls`
/// rows: the last one at or before the snapshot and the first one after it,
/// each an `ORDER BY recorded_at … LIMIT 1` on `host = m.host`. With an index
/// on `controls(host, recorded_at)` each is a single index probe, so the cost
/// grows with the number of snapshots to link, not with the size of
/// `controls`; without one, each is a scan of the host's `controls` rows.
/// audmon owns `controls`, so that index is its to create (stringdriverd
/// creates nothing on its tables). The tolerance is applied to the nearer of
/// the two, which is within it whenever either is; on a tie the earlier row
/// wins.
///
/// The update joins `controls_id` over as it is, without casting, so the
/// statement works whether audmon's column (and therefore
/// machine_state.controls_id) is UUID or text. `controls_id IS NULL` is
/// checked again on the row being updated, so a concurrent run or a row
/// linked meanwhile is left alone.
///
/// $1 host, $2 since (NULL: no lower bound), $3 tolerance in microseconds.
const BACKFILL: &str = "\
UPDATE machine_state AS ms
SET controls_id = pick.controls_id
FROM (
    SELECT m.state_id, near.controls_id, near.recorded_at AS controls_at
    FROM machine_state AS m
    CROSS JOIN LATERAL (
        SELECT n.controls_id, n.recorded_at
        FROM (
            (SELECT c.controls_id, c.recorded_at
               FROM controls AS c
              WHERE c.host = m.host AND c.recorded_at <= m.recorded_at
              ORDER BY c.recorded_at DESC, c.controls_id
              LIMIT 1)
            UNION ALL
            (SELECT c.controls_id, c.recorded_at
               FROM controls AS c
              WHERE c.host = m.host AND c.recorded_at > m.recorded_at
              ORDER BY c.recorded_at, c.controls_id
              LIMIT 1)
        ) AS n
        ORDER BY abs(extract(epoch FROM n.recorded_at - m.recorded_at)), n.recorded_at
        LIMIT 1
    ) AS near
    WHERE m.host = $1
      AND m.controls_id IS NULL
      AND m.recorded_at >= coalesce($2::timestamptz, '-infinity'::timestamptz)
      AND abs(extract(epoch FROM near.recorded_at - m.recorded_at)) * 1000000 <= $3::int8
) AS pick
WHERE ms.state_id = pick.state_id
  AND ms.controls_id IS NULL
RETURNING ms.state_id, pick.controls_id::text, ms.recorded_at, pick.controls_at";

/// Links every `machine_state` row of `host` whose `controls_id` is NULL
/// (and, with `since`, whose `recorded_at >= since`) to the `controls` row
/// of the same host nearest in time, if one lies within `tolerance` either
/// side; on a tie, the earlier `controls` row. Rows with nothing within
/// `tolerance` stay NULL.
///
/// One statement, so it is atomic, and idempotent: a second run finds
/// nothing to change and returns an empty list. Returns the rows changed,
/// ordered by `recorded_at`.
pub async fn backfill(
    client: &Client,
    host: &str,
    since: Option<DateTime<Utc>>,
    tolerance: Duration,
) -> Result<Vec<Linked>, LinkError> {
    let database = |action: &str| {
        let action = action.to_string();
        move |e: tokio_postgres::Error| LinkError::Database {
            action: action.clone(),
            cause: error_text(&e),
            code: e.code().cloned(),
        }
    };
    // Beyond i64 microseconds (292,000 years) nothing is farther apart anyway.
    let tolerance_us = i64::try_from(tolerance.as_micros()).unwrap_or(i64::MAX);
    let rows = client
        .query(BACKFILL, &[&host, &since, &tolerance_us])
        .await
        .map_err(database(&format!(
            "linking machine_state rows of host {host} to controls"
        )))?;
    let decode = database("reading the linked machine_state rows");
    let mut linked = rows
        .iter()
        .map(|row| {
            let recorded_at: DateTime<Utc> = row.try_get(2).map_err(&decode)?;
            let controls_at: DateTime<Utc> = row.try_get(3).map_err(&decode)?;
            Ok(Linked {
                state_id: row.try_get(0).map_err(&decode)?,
                controls_id: row.try_get(1).map_err(&decode)?,
                recorded_at,
                offset_ms: controls_at
                    .signed_duration_since(recorded_at)
                    .num_milliseconds(),
            })
        })
        .collect::<Result<Vec<Linked>, LinkError>>()?;
    // RETURNING comes in no particular order.
    linked.sort_by_key(|a| (a.recorded_at, a.state_id));
    Ok(linked)
}

/// What `stringdriverd link` prints: one line per changed row
/// (`state_id=… controls_id=… recorded_at=… offset_ms=±…`), then
/// `linked N machine_state rows`. Every line ends with a newline.
pub fn render_linked(rows: &[Linked]) -> String {
    let mut out = String::new();
    for r in rows {
        out.push_str(&format!(
            "state_id={} controls_id={} recorded_at={} offset_ms={:+}\n",
            r.state_id,
            r.controls_id,
            r.recorded_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            r.offset_ms
        ));
    }
    out.push_str(&format!("linked {} machine_state rows\n", rows.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(secs: i64, ms: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).single().unwrap() + TimeDelta::milliseconds(ms)
    }

    #[test]
    fn fresh_takes_rows_within_max_age_either_side() {
        let id = Uuid::from_u128(7);
        let newest = Some((id, t(100, 0)));
        let max = Duration::from_secs(2);
        assert_eq!(fresh(newest, t(100, 0), max), Some(id));
        assert_eq!(fresh(newest, t(102, 0), max), Some(id));
        assert_eq!(fresh(newest, t(102, 1), max), None);
        assert_eq!(fresh(newest, t(98, 0), max), Some(id));
        assert_eq!(fresh(newest, t(97, 999), max), None);
        assert_eq!(fresh(None, t(100, 0), max), None);
        assert_eq!(fresh(newest, t(5_000_000, 0), Duration::MAX), Some(id));
    }

    #[test]
    fn only_canonical_uuid_text_is_linkable() {
        let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(linkable(&id.to_string()), Some(id));
        assert_eq!(linkable(&id.to_string().to_uppercase()), None);
        assert_eq!(linkable(&id.simple().to_string()), None);
        assert_eq!(linkable(&id.braced().to_string()), None);
        assert_eq!(linkable("frame-17"), None);
        assert_eq!(linkable(""), None);
    }

    #[test]
    fn disabled_cache_never_links() {
        let cache = ControlsCache::disabled();
        assert_eq!(cache.lookup(t(0, 0), Duration::MAX), None);
        assert_eq!(cache.status(), ControlsCacheStatus::default());
    }

    #[test]
    fn render_lists_each_row_then_the_count() {
        let rows = [
            Linked {
                state_id: Uuid::from_u128(1),
                controls_id: "ctl-1".into(),
                recorded_at: t(0, 250),
                offset_ms: -250,
            },
            Linked {
                state_id: Uuid::from_u128(2),
                controls_id: Uuid::from_u128(3).to_string(),
                recorded_at: t(10, 0),
                offset_ms: 1500,
            },
        ];
        assert_eq!(
            render_linked(&rows),
            "state_id=00000000-0000-0000-0000-000000000001 controls_id=ctl-1 \
             recorded_at=2027-01-15T08:00:00.250Z offset_ms=-250\n\
             state_id=00000000-0000-0000-0000-000000000002 \
             controls_id=00000000-0000-0000-0000-000000000003 \
             recorded_at=2027-01-15T08:00:10Z offset_ms=+1500\n\
             linked 2 machine_state rows\n"
        );
        assert_eq!(render_linked(&[]), "linked 0 machine_state rows\n");
    }

    #[test]
    fn link_error_names_action_and_cause() {
        let e = LinkError::Database {
            action: "linking machine_state rows of host h to controls".into(),
            cause: "ERROR: relation \"controls\" does not exist (SQLSTATE 42P01)".into(),
            code: None,
        };
        let text = e.to_string();
        assert!(
            text.contains("linking machine_state rows of host h"),
            "{text}"
        );
        assert!(text.contains("42P01"), "{text}");
    }
}
