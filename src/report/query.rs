//! The report's queries: everything aggregated or capped in PostgreSQL, so
//! that what comes back is bounded by the number of buckets and the caps,
//! whatever the window.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use super::ReportError;
use crate::config::{Layout, Role};
use crate::store::pg::error_text;

/// Gaps listed one by one (the totals count them all).
pub const MAX_GAPS: i64 = 200;

/// Operations drawn one by one (the table counts them all).
pub const MAX_OPERATIONS: i64 = 5000;

/// A window end this close to now (or later) may still have records in the
/// host's spool.
const RECENT: Duration = Duration::from_secs(600);

/// What to read.
#[derive(Debug, Clone)]
pub struct Window {
    /// The host.
    pub host: String,
    /// Start (inclusive).
    pub since: DateTime<Utc>,
    /// End (exclusive).
    pub until: DateTime<Utc>,
    /// Time buckets of the charts.
    pub buckets: usize,
    /// Shortest span without rows that counts as a gap (longer where the
    /// table's rows are sparser, see [`Gaps::threshold`]).
    pub gap: Duration,
}

impl Window {
    /// Length of one bucket, seconds.
    pub fn bucket_seconds(&self) -> f64 {
        let total = (self.until - self.since).num_milliseconds() as f64 / 1000.0;
        total / self.buckets.max(1) as f64
    }
}

/// Min and max of a value over one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

/// One value's min/max per bucket (`None`: no row in that bucket).
pub type Series = Vec<Option<Span>>;

/// What a stepper index is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepperRole {
    /// Global index (0-based, as in `stepper_positions`).
    pub index: usize,
    /// `x`, `z_in`, `z_out`, `tuner` or `unused`.
    pub role: String,
    /// The string, for Z steppers and tuners.
    pub string: Option<usize>,
}

/// Per channel: the measured values and the threshold bands.
#[derive(Debug, Clone, Default)]
pub struct Channel {
    /// voice_count.
    pub voice_count: Series,
    /// amp_sum.
    pub amp_sum: Series,
    /// The band `voice_count_min`..`voice_count_max` (widest in the bucket).
    pub voice_band: Series,
    /// The band `amp_sum_min`..`amp_sum_max` (widest in the bucket).
    pub amp_band: Series,
}

/// Row counts of the window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// `machine_state` rows.
    pub machine_state: u64,
    /// Of which with a `controls_id`.
    pub linked: u64,
    /// `controls` rows.
    pub controls: u64,
    /// First and last `machine_state` row.
    pub first: Option<DateTime<Utc>>,
    /// Last `machine_state` row.
    pub last: Option<DateTime<Utc>>,
    /// Longest `stepper_positions` array.
    pub steppers: usize,
    /// Longest `voice_count` array.
    pub channels: usize,
}

/// A span of the window without rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Gap {
    /// Last row before it (or the window's start).
    pub from: DateTime<Utc>,
    /// First row after it (or the window's end).
    pub to: DateTime<Utc>,
    /// Why, as far as the data can say.
    pub reason: String,
    /// A short key for the reason (for tools).
    pub kind: &'static str,
}

/// The gaps of one table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gaps {
    /// How many there are.
    pub total: u64,
    /// Their summed length, seconds.
    pub seconds: f64,
    /// The first [`MAX_GAPS`] in time order.
    pub listed: Vec<Gap>,
    /// Shortest span counted as a gap, seconds: the window's `gap`, or three
    /// times the table's median interval between rows if longer.
    pub threshold: f64,
}

/// One operation row.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    /// Its id.
    pub id: String,
    /// `operation_type`.
    pub kind: String,
    /// `operation_status`.
    pub status: String,
    /// `message`.
    pub message: Option<String>,
    /// `recorded_at` (its start).
    pub start: DateTime<Utc>,
    /// `completed_at`, when it ended (and it was recorded).
    pub end: Option<DateTime<Utc>>,
    /// `stepper_indices`.
    pub steppers: Vec<i32>,
}

/// The operations of the window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Operations {
    /// How many.
    pub total: u64,
    /// Count per (type, status), all of them.
    pub by_type_status: BTreeMap<(String, String), u64>,
    /// The first [`MAX_OPERATIONS`] in time order.
    pub listed: Vec<Operation>,
    /// Operations whose message mentions a board reset.
    pub resets: u64,
    /// Operations whose message mentions a disconnected board.
    pub disconnections: u64,
}

/// Everything the page shows.
#[derive(Debug, Clone, Default)]
pub struct ReportData {
    /// Row counts.
    pub counts: Counts,
    /// What each stepper is, and where the map came from.
    pub roles: Vec<StepperRole>,
    /// `stepper_roles`, the configuration or none.
    pub roles_from: &'static str,
    /// Per stepper (global index): its position's min/max per bucket.
    pub positions: Vec<Series>,
    /// Per channel.
    pub channels: Vec<Channel>,
    /// Gaps in `machine_state`.
    pub state_gaps: Gaps,
    /// Gaps in `controls` (audmon's frames).
    pub audio_gaps: Gaps,
    /// Operations.
    pub ops: Operations,
}

fn failed(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> ReportError {
    move |e| ReportError::Query {
        what,
        cause: error_text(&e),
    }
}

async fn rows(
    client: &Client,
    what: &'static str,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, ReportError> {
    client.query(sql, params).await.map_err(failed(what))
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    what: &'static str,
    i: usize,
) -> Result<T, ReportError> {
    row.try_get(i).map_err(failed(what))
}

/// Reads everything for `w`; `layout` is the configuration's, used for the
/// stepper roles when the database has none for the host. `now` decides
/// whether the end of the window may still be in a spool.
pub async fn fetch(
    client: &Client,
    w: &Window,
    layout: Option<&Layout>,
    now: DateTime<Utc>,
) -> Result<ReportData, ReportError> {
    let counts = counts(client, w).await?;
    let (roles, roles_from) = match roles(client, w).await? {
        r if !r.is_empty() => (r, "stepper_roles"),
        _ => match layout {
            Some(l) => (layout_roles(l), "the configuration's [layout]"),
            None => (Vec::new(), "nowhere (no stepper_roles rows for the host)"),
        },
    };
    let (positions, channels) = series(client, w, counts.steppers, counts.channels).await?;
    let state_gaps = gaps(client, w, "machine_state", now).await?;
    let audio_gaps = gaps(client, w, "controls", now).await?;
    let ops = operations(client, w).await?;
    Ok(ReportData {
        counts,
        roles,
        roles_from,
        positions,
        channels,
        state_gaps,
        audio_gaps,
        ops,
    })
}

async fn counts(client: &Client, w: &Window) -> Result<Counts, ReportError> {
    const WHAT: &str = "counting the window's rows";
    let r = rows(
        client,
        WHAT,
        "SELECT count(*), count(controls_id), min(recorded_at), max(recorded_at), \
         (SELECT count(*) FROM controls WHERE host = $1 AND recorded_at >= $2 AND recorded_at < $3), \
         coalesce(max(cardinality(stepper_positions)), 0), coalesce(max(cardinality(voice_count)), 0) \
         FROM machine_state WHERE host = $1 AND recorded_at >= $2 AND recorded_at < $3",
        &[&w.host, &w.since, &w.until],
    )
    .await?;
    let Some(r) = r.first() else {
        return Ok(Counts::default());
    };
    Ok(Counts {
        machine_state: get::<i64>(r, WHAT, 0)?.max(0) as u64,
        linked: get::<i64>(r, WHAT, 1)?.max(0) as u64,
        first: get(r, WHAT, 2)?,
        last: get(r, WHAT, 3)?,
        controls: get::<i64>(r, WHAT, 4)?.max(0) as u64,
        steppers: get::<i32>(r, WHAT, 5)?.max(0) as usize,
        channels: get::<i32>(r, WHAT, 6)?.max(0) as usize,
    })
}

async fn roles(client: &Client, w: &Window) -> Result<Vec<StepperRole>, ReportError> {
    const WHAT: &str = "reading stepper_roles";
    let mut out = Vec::new();
    for r in rows(
        client,
        WHAT,
        "SELECT stepper_index, role, string_index FROM stepper_roles WHERE host = $1 \
         AND stepper_index >= 0 ORDER BY stepper_index",
        &[&w.host],
    )
    .await?
    {
        out.push(StepperRole {
            index: get::<i32>(&r, WHAT, 0)?.max(0) as usize,
            role: get(&r, WHAT, 1)?,
            string: get::<Option<i32>>(&r, WHAT, 2)?.and_then(|s| usize::try_from(s).ok()),
        });
    }
    Ok(out)
}

fn layout_roles(layout: &Layout) -> Vec<StepperRole> {
    (0..layout.total_steppers())
        .map(|index| {
            let role = layout.role(index);
            StepperRole {
                index,
                role: crate::store::roles::role_name(role).to_string(),
                string: match role {
                    Role::Unused => None,
                    r => r.string(),
                },
            }
        })
        .collect()
}

/// Most steppers and channels charted: the query has two columns per value
/// and element, and a malformed row must not make it enormous.
const MAX_STEPPERS: usize = 128;
const MAX_CHANNELS: usize = 32;

/// The per-channel arrays, in the order of [`Channel`]'s fields: the value
/// and the band's lower and upper edge.
const CHANNEL_ARRAYS: [(&str, &str); 4] = [
    ("voice_count", "voice_count"),
    ("amp_sum", "amp_sum"),
    ("voice_count_min", "voice_count_max"),
    ("amp_sum_min", "amp_sum_max"),
];

fn span(min: Option<f64>, max: Option<f64>) -> Option<Span> {
    Some(Span {
        min: min?,
        max: max?,
    })
}

/// Every charted value's min and max per bucket, in one pass over the
/// window's `machine_state` rows: one `min(a[k])`, `max(a[k])` pair per
/// array element, grouped by bucket (a few hundred groups, whatever the
/// number of rows). Elements past a row's array length are NULL and do not
/// count.
async fn series(
    client: &Client,
    w: &Window,
    steppers: usize,
    channels: usize,
) -> Result<(Vec<Series>, Vec<Channel>), ReportError> {
    const WHAT: &str = "reading positions, voice_count and amp_sum";
    let steppers = steppers.min(MAX_STEPPERS);
    let channels = channels.min(MAX_CHANNELS);
    let mut cols = String::new();
    for k in 1..=steppers {
        let _ = write!(
            cols,
            ", min(m.stepper_positions[{k}])::float8, max(m.stepper_positions[{k}])::float8"
        );
    }
    for c in 1..=channels {
        for (lo, hi) in CHANNEL_ARRAYS {
            let _ = write!(cols, ", min(m.{lo}[{c}])::float8, max(m.{hi}[{c}])::float8");
        }
    }
    // The bucket of a row is computed, and joined to generate_series: the
    // planner then knows there are at most `$5` groups and aggregates in a
    // small (parallel) hash table over a scan, where grouping by the
    // computed bucket alone made it expect a group per row and sort the
    // whole window on disk (3x slower on a million rows).
    let sql = format!(
        "SELECT b.i{cols} FROM machine_state m \
         JOIN generate_series(0, $5 - 1) AS b(i) ON b.i = LEAST(GREATEST( \
              floor(extract(epoch FROM m.recorded_at - $2)::float8 / $4)::int4, 0), $5 - 1) \
         WHERE m.host = $1 AND m.recorded_at >= $2 AND m.recorded_at < $3 \
         GROUP BY b.i ORDER BY b.i"
    );
    let buckets = i32::try_from(w.buckets).unwrap_or(i32::MAX);
    let empty = vec![None; w.buckets];
    let mut positions = vec![empty.clone(); steppers];
    let mut chans = vec![
        Channel {
            voice_count: empty.clone(),
            amp_sum: empty.clone(),
            voice_band: empty.clone(),
            amp_band: empty.clone(),
        };
        channels
    ];
    for r in rows(
        client,
        WHAT,
        &sql,
        &[&w.host, &w.since, &w.until, &w.bucket_seconds(), &buckets],
    )
    .await?
    {
        let b = get::<i32>(&r, WHAT, 0)?.max(0) as usize;
        if b >= w.buckets {
            continue;
        }
        let pair = |i: usize| -> Result<Option<Span>, ReportError> {
            Ok(span(get(&r, WHAT, 1 + 2 * i)?, get(&r, WHAT, 2 + 2 * i)?))
        };
        for (k, p) in positions.iter_mut().enumerate() {
            p[b] = pair(k)?;
        }
        for (c, ch) in chans.iter_mut().enumerate() {
            let at = steppers + 4 * c;
            ch.voice_count[b] = pair(at)?;
            ch.amp_sum[b] = pair(at + 1)?;
            ch.voice_band[b] = pair(at + 2)?;
            ch.amp_band[b] = pair(at + 3)?;
        }
    }
    Ok((positions, chans))
}

/// Spans of at least `w.gap` without a row of `table` (the window's ends
/// count as rows), with the reason the data gives.
async fn gaps(
    client: &Client,
    w: &Window,
    table: &'static str,
    now: DateTime<Utc>,
) -> Result<Gaps, ReportError> {
    const WHAT: &str = "finding gaps in recording";
    // For machine_state gaps, whether audmon logged frames meanwhile; for
    // controls gaps, whether the daemon captured snapshots meanwhile: looked
    // up for the listed gaps only, after the totals are counted.
    let other = if table == "machine_state" {
        "controls"
    } else {
        "machine_state"
    };
    // The threshold is the configured one, or three times the table's
    // median interval between rows if longer (audmon logging one frame every
    // 4 s has no gap every 4 s); the window's ends are not rows and do not
    // count in the median. `th` always has one row, so the threshold comes
    // back even when there is no gap.
    let sql = format!(
        "WITH t AS ( \
            SELECT recorded_at AS at, false AS edge FROM {table} \
             WHERE host = $1 AND recorded_at >= $2 AND recorded_at < $3 \
            UNION ALL SELECT $2, true UNION ALL SELECT $3, true), \
         g AS (SELECT lag(at) OVER w AS a, at AS b, lag(edge) OVER w OR edge AS edge \
                 FROM t WINDOW w AS (ORDER BY at)), \
         th AS (SELECT greatest($4, 3 * coalesce(percentile_cont(0.5) WITHIN GROUP \
                       (ORDER BY extract(epoch FROM b - a)::float8), 0)) AS s \
                  FROM g WHERE a IS NOT NULL AND NOT edge), \
         big AS (SELECT a, b FROM g, th WHERE extract(epoch FROM b - a)::float8 >= th.s), \
         listed AS (SELECT a, b, count(*) OVER () AS n, \
                           sum(extract(epoch FROM b - a)::float8) OVER () AS s \
                      FROM big ORDER BY a LIMIT $5) \
         SELECT th.s, listed.a, listed.b, listed.n, listed.s, \
                EXISTS (SELECT 1 FROM {other} o WHERE o.host = $1 \
                        AND o.recorded_at > listed.a AND o.recorded_at < listed.b) \
           FROM th LEFT JOIN listed ON true ORDER BY listed.a"
    );
    let gap = w.gap.as_secs_f64();
    let mut out = Gaps {
        threshold: gap,
        ..Gaps::default()
    };
    for r in rows(
        client,
        WHAT,
        &sql,
        &[&w.host, &w.since, &w.until, &gap, &MAX_GAPS],
    )
    .await?
    {
        out.threshold = get::<Option<f64>>(&r, WHAT, 0)?.unwrap_or(gap);
        let (Some(from), Some(to)) = (
            get::<Option<DateTime<Utc>>>(&r, WHAT, 1)?,
            get::<Option<DateTime<Utc>>>(&r, WHAT, 2)?,
        ) else {
            continue;
        };
        out.total = get::<Option<i64>>(&r, WHAT, 3)?.unwrap_or(0).max(0) as u64;
        out.seconds = get::<Option<f64>>(&r, WHAT, 4)?.unwrap_or(0.0);
        let other_rows: bool = get(&r, WHAT, 5)?;
        let (kind, reason) = reason(table, w, from, to, other_rows, now);
        out.listed.push(Gap {
            from,
            to,
            reason,
            kind,
        });
    }
    Ok(out)
}

/// What the data can say about a gap of `table` from `from` to `to`.
fn reason(
    table: &str,
    w: &Window,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    other_rows: bool,
    now: DateTime<Utc>,
) -> (&'static str, String) {
    let recent = chrono::TimeDelta::from_std(RECENT).unwrap_or(chrono::TimeDelta::zero());
    if to == w.until && w.until > now - recent {
        return (
            "unshipped",
            "up to the end of the window, which is now or very recent: the records may still \
             be in the host's spool (stringdriverd spool-status shows its backlog)"
                .to_string(),
        );
    }
    match (table, other_rows) {
        ("machine_state", true) => (
            "daemon_not_capturing",
            "audmon logged frames but the daemon recorded no snapshot: it was paused, a board \
             was down or its counters untrusted (the snapshot engine skips those), or the \
             daemon was stopped"
                .to_string(),
        ),
        ("machine_state", false) => (
            "nothing_recorded",
            "neither snapshots nor audmon frames: the host was down or could not reach the \
             database, and its spool has not shipped (or lost) these records"
                .to_string(),
        ),
        (_, true) => (
            "audmon_not_logging",
            "the daemon recorded snapshots but audmon logged no frame: audmon was stopped or \
             could not write to the database"
                .to_string(),
        ),
        (_, false) => (
            "nothing_recorded",
            format!(
                "no audmon frames and no snapshots{}",
                if from == w.since {
                    " from the start of the window"
                } else {
                    ""
                }
            ),
        ),
    }
}

async fn operations(client: &Client, w: &Window) -> Result<Operations, ReportError> {
    const WHAT: &str = "reading the operations";
    // Every operation that overlaps the window: started before its end, and
    // ended (or still running, or with no end recorded) after its start.
    const IN_WINDOW: &str = "host = $1 AND recorded_at < $3 \
         AND (completed_at IS NULL OR completed_at >= $2) \
         AND (completed_at IS NOT NULL OR operation_status = 'started' OR recorded_at >= $2)";
    let mut out = Operations::default();
    for r in rows(
        client,
        WHAT,
        &format!(
            "SELECT operation_type, operation_status, count(*), \
             count(*) FILTER (WHERE message ILIKE '%reset%'), \
             count(*) FILTER (WHERE message ILIKE '%disconnect%' OR message ILIKE '%not connected%') \
             FROM operations WHERE {IN_WINDOW} GROUP BY 1, 2 ORDER BY 1, 2"
        ),
        &[&w.host, &w.since, &w.until],
    )
    .await?
    {
        let n = get::<i64>(&r, WHAT, 2)?.max(0) as u64;
        out.total += n;
        out.resets += get::<i64>(&r, WHAT, 3)?.max(0) as u64;
        out.disconnections += get::<i64>(&r, WHAT, 4)?.max(0) as u64;
        out.by_type_status
            .insert((get(&r, WHAT, 0)?, get(&r, WHAT, 1)?), n);
    }
    for r in rows(
        client,
        WHAT,
        &format!(
            "SELECT operation_id::text, operation_type, operation_status, message, recorded_at, \
             completed_at, stepper_indices FROM operations WHERE {IN_WINDOW} \
             ORDER BY recorded_at, operation_id LIMIT $4"
        ),
        &[&w.host, &w.since, &w.until, &MAX_OPERATIONS],
    )
    .await?
    {
        out.listed.push(Operation {
            id: get(&r, WHAT, 0)?,
            kind: get(&r, WHAT, 1)?,
            status: get(&r, WHAT, 2)?,
            message: get(&r, WHAT, 3)?,
            start: get(&r, WHAT, 4)?,
            end: get(&r, WHAT, 5)?,
            steppers: get(&r, WHAT, 6)?,
        });
    }
    Ok(out)
}
