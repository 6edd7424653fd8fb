//! The export's reads, all in one read-only REPEATABLE READ transaction so
//! that the shapes, the episodes and the frames describe the same data: the
//! host check, the dataset's shapes, the operations, and the frames streamed
//! through a portal [`super::BATCH_FRAMES`] rows at a time.
//!
//! The session comes from [`crate::store::pg`] (the exporter opens no
//! connection of its own); every statement here only reads.

use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row, Transaction};

use super::args::Plan;
use super::episodes::{Episodes, Operation};
use super::features::{Batch, FrameRow, Layout, StateRow};
use super::{ExportError, BATCH_FRAMES};

/// The frames of a host in a window with the machine_state in force at each
/// (`$1` host, `$2` since inclusive, `$3` until exclusive, `$4` tolerance in
/// microseconds), in time order.
///
/// The state in force: the newest row of the host linked to the frame by
/// controls_id if there is one, else the newest row of the host recorded at
/// or before the frame and no more than the tolerance before it. A frame
/// with neither comes out with a NULL state_id (counted as dropped), and its
/// partials are not aggregated. Partials come as parallel arrays in
/// (channel, partial_index) order.
pub const FRAMES: &str = "\
SELECT c.controls_id::text, c.recorded_at,
       s.state_id::text, s.recorded_at, s.linked,
       s.stepper_positions, s.stepper_enabled, s.bump_check_enable,
       s.z_up_step, s.z_down_step, s.tune_rest, s.x_rest, s.z_rest, s.lap_rest,
       s.adjustment_level, s.retry_threshold, s.delta_threshold, s.z_variance_threshold,
       s.voice_count_min, s.voice_count_max, s.amp_sum_min, s.amp_sum_max,
       p.channel, p.partial_index, p.frequency, p.amplitude
FROM controls c
LEFT JOIN LATERAL (
    SELECT * FROM (
        (SELECT ms.*, true AS linked FROM machine_state ms
          WHERE ms.controls_id = c.controls_id AND ms.host = c.host
          ORDER BY ms.recorded_at DESC, ms.state_id DESC LIMIT 1)
        UNION ALL
        (SELECT ms.*, false AS linked FROM machine_state ms
          WHERE ms.host = c.host
            AND ms.recorded_at <= c.recorded_at
            AND ms.recorded_at >= c.recorded_at - $4::int8 * interval '1 microsecond'
          ORDER BY ms.recorded_at DESC, ms.state_id DESC LIMIT 1)
    ) candidates
    ORDER BY linked DESC LIMIT 1
) s ON true
LEFT JOIN LATERAL (
    SELECT array_agg(pp.channel ORDER BY pp.channel, pp.partial_index) AS channel,
           array_agg(pp.partial_index ORDER BY pp.channel, pp.partial_index) AS partial_index,
           array_agg(pp.frequency ORDER BY pp.channel, pp.partial_index) AS frequency,
           array_agg(pp.amplitude ORDER BY pp.channel, pp.partial_index) AS amplitude
    FROM partials pp
    WHERE pp.controls_id = c.controls_id AND s.state_id IS NOT NULL
) p ON true
WHERE c.host = $1 AND c.recorded_at >= $2 AND c.recorded_at < $3
ORDER BY c.recorded_at, c.controls_id";

/// What was read.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Frames of the window with a state in force (written).
    pub frames: u64,
    /// Frames of the window without one (dropped).
    pub dropped: u64,
    /// Written frames whose state is linked by controls_id.
    pub linked: u64,
    /// Written frames whose state was found by time.
    pub by_time: u64,
    /// Written frames with fewer partials rows than channels × partials
    /// (the missing slots are written as empty: 0, 0).
    pub incomplete_partials: u64,
}

/// Opens the read-only snapshot every read of the export uses.
pub async fn snapshot(client: &mut Client) -> Result<Transaction<'_>, ExportError> {
    client
        .build_transaction()
        .read_only(true)
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .map_err(ExportError::query("starting the read-only transaction"))
}

/// Hosts with rows in stepper_roles or machine_state (a skip scan of
/// machine_state's host index: one probe per host, not a table scan).
const KNOWN_HOSTS: &str = "\
WITH RECURSIVE h(host) AS (
    (SELECT host FROM machine_state ORDER BY host LIMIT 1)
    UNION ALL
    SELECT (SELECT m.host FROM machine_state m WHERE m.host > h.host ORDER BY m.host LIMIT 1)
    FROM h WHERE h.host IS NOT NULL
)
SELECT host::text FROM h WHERE host IS NOT NULL
UNION SELECT DISTINCT host::text FROM stepper_roles
ORDER BY 1";

/// Refuses a host with no rows at all (most likely a typo), naming the
/// hosts that have some.
pub async fn check_host(tx: &Transaction<'_>, host: &str, server: &str) -> Result<(), ExportError> {
    let row = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM controls WHERE host = $1)
                 OR EXISTS (SELECT 1 FROM machine_state WHERE host = $1)
                 OR EXISTS (SELECT 1 FROM stepper_roles WHERE host = $1)",
            &[&host],
        )
        .await
        .map_err(ExportError::query("looking for the host"))?;
    if row.get::<_, bool>(0) {
        return Ok(());
    }
    let known = tx
        .query(KNOWN_HOSTS, &[])
        .await
        .map_err(ExportError::query("listing the hosts"))?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    Err(ExportError::UnknownHost {
        host: host.to_string(),
        server: server.to_string(),
        known,
    })
}

fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The dataset's fixed shapes: channels × partials from the window's first
/// frame that has partials; steppers and threshold channels from the
/// window's first machine_state (tolerance before `since` included);
/// stepper names from the host's stepper_roles when they cover exactly those
/// steppers, else `stepper_K`.
pub async fn layout(tx: &Transaction<'_>, plan: &Plan) -> Result<Layout, ExportError> {
    let tol = micros(plan.tolerance);
    let shape = tx
        .query_opt(
            "SELECT (max(p.channel) + 1)::int8, (max(p.partial_index) + 1)::int8
             FROM partials p
             WHERE p.controls_id = (
                 SELECT c.controls_id FROM controls c
                 WHERE c.host = $1 AND c.recorded_at >= $2 AND c.recorded_at < $3
                   AND EXISTS (SELECT 1 FROM partials q WHERE q.controls_id = c.controls_id)
                 ORDER BY c.recorded_at LIMIT 1)
             HAVING count(*) > 0",
            &[&plan.host, &plan.since, &plan.until],
        )
        .await
        .map_err(ExportError::query("reading the shape of the partials"))?;
    let (channels, partials) = shape.map_or((0, 0), |r| {
        (
            usize::try_from(r.get::<_, i64>(0)).unwrap_or(0),
            usize::try_from(r.get::<_, i64>(1)).unwrap_or(0),
        )
    });
    let state = tx
        .query_opt(
            "SELECT coalesce(array_length(stepper_positions, 1), 0)::int8,
                    coalesce(array_length(voice_count_min, 1), 0)::int8
             FROM machine_state
             WHERE host = $1 AND recorded_at >= $2::timestamptz - $4::int8 * interval '1 microsecond'
               AND recorded_at < $3
             ORDER BY recorded_at LIMIT 1",
            &[&plan.host, &plan.since, &plan.until, &tol],
        )
        .await
        .map_err(ExportError::query("reading the shape of machine_state"))?;
    let roles = tx
        .query(
            "SELECT stepper_index, role::text, string_index FROM stepper_roles
             WHERE host = $1 ORDER BY stepper_index",
            &[&plan.host],
        )
        .await
        .map_err(ExportError::query("reading stepper_roles"))?;
    let (steppers, threshold_channels) = match state {
        Some(r) => (
            usize::try_from(r.get::<_, i64>(0)).unwrap_or(0),
            usize::try_from(r.get::<_, i64>(1)).unwrap_or(0),
        ),
        None => (roles.len(), channels),
    };
    let covers = roles.len() == steppers
        && roles
            .iter()
            .enumerate()
            .all(|(i, r)| r.get::<_, i32>(0) == i as i32);
    let names = if covers {
        roles
            .iter()
            .map(|r| {
                let role: String = r.get(1);
                match r.get::<_, Option<i32>>(2) {
                    Some(s) => format!("{role}_{s}"),
                    None if role == "unused" => format!("unused_{}", r.get::<_, i32>(0)),
                    None => role,
                }
            })
            .collect()
    } else {
        (0..steppers).map(|k| format!("stepper_{k}")).collect()
    };
    Ok(Layout::new(channels, partials, names, threshold_channels))
}

/// The operations of the host that ran in the window (started before its
/// end, and ended in it, or still `started`), by start and then longest
/// first.
pub async fn operations(tx: &Transaction<'_>, plan: &Plan) -> Result<Vec<Operation>, ExportError> {
    let rows = tx
        .query(
            "SELECT operation_id::text, state_id::text, recorded_at, completed_at,
                    operation_type::text, operation_status::text, message,
                    stepper_indices, final_positions
             FROM operations
             WHERE host = $1 AND recorded_at < $3
               AND (completed_at >= $2
                    OR (completed_at IS NULL
                        AND (operation_status = 'started' OR recorded_at >= $2)))
             ORDER BY recorded_at, completed_at DESC NULLS FIRST, operation_id",
            &[&plan.host, &plan.since, &plan.until],
        )
        .await
        .map_err(ExportError::query("reading the operations"))?;
    rows.iter()
        .map(|r| {
            Ok(Operation {
                operation_id: r.try_get(0).map_err(decode("operation_id"))?,
                state_id: r.try_get(1).map_err(decode("state_id"))?,
                start: r.try_get(2).map_err(decode("recorded_at"))?,
                completed_at: r.try_get(3).map_err(decode("completed_at"))?,
                kind: r.try_get(4).map_err(decode("operation_type"))?,
                status: r.try_get(5).map_err(decode("operation_status"))?,
                message: r.try_get(6).map_err(decode("message"))?,
                stepper_indices: r.try_get(7).map_err(decode("stepper_indices"))?,
                final_positions: r.try_get(8).map_err(decode("final_positions"))?,
            })
        })
        .collect()
}

fn decode(what: &'static str) -> impl Fn(tokio_postgres::Error) -> ExportError {
    move |e| ExportError::Query {
        what: "decoding a row",
        cause: format!("column {what}: {e}"),
    }
}

/// One row of [`FRAMES`]: `None` when no state is in force.
fn frame(r: &Row) -> Result<Option<FrameRow>, ExportError> {
    let state_id: Option<String> = r.try_get(2).map_err(decode("state_id"))?;
    let Some(state_id) = state_id else {
        return Ok(None);
    };
    // A frame without partials rows aggregates to NULL arrays.
    let opt_vec_i32 = |i: usize, what: &'static str| -> Result<Vec<i32>, ExportError> {
        Ok(r.try_get::<_, Option<Vec<i32>>>(i)
            .map_err(decode(what))?
            .unwrap_or_default())
    };
    let opt_vec_f32 = |i: usize, what: &'static str| -> Result<Vec<f32>, ExportError> {
        Ok(r.try_get::<_, Option<Vec<f32>>>(i)
            .map_err(decode(what))?
            .unwrap_or_default())
    };
    let state = StateRow {
        state_id,
        recorded_at: r.try_get(3).map_err(decode("machine_state.recorded_at"))?,
        linked: r.try_get(4).map_err(decode("linked"))?,
        positions: r.try_get(5).map_err(decode("stepper_positions"))?,
        enabled: r.try_get(6).map_err(decode("stepper_enabled"))?,
        bump_check_enable: r.try_get(7).map_err(decode("bump_check_enable"))?,
        steps: [
            r.try_get(8).map_err(decode("z_up_step"))?,
            r.try_get(9).map_err(decode("z_down_step"))?,
        ],
        rests: [
            r.try_get(10).map_err(decode("tune_rest"))?,
            r.try_get(11).map_err(decode("x_rest"))?,
            r.try_get(12).map_err(decode("z_rest"))?,
            r.try_get(13).map_err(decode("lap_rest"))?,
        ],
        levels: [
            r.try_get(14).map_err(decode("adjustment_level"))?,
            r.try_get(15).map_err(decode("retry_threshold"))?,
            r.try_get(16).map_err(decode("delta_threshold"))?,
            r.try_get(17).map_err(decode("z_variance_threshold"))?,
        ],
        thresholds: [
            r.try_get(18).map_err(decode("voice_count_min"))?,
            r.try_get(19).map_err(decode("voice_count_max"))?,
            r.try_get(20).map_err(decode("amp_sum_min"))?,
            r.try_get(21).map_err(decode("amp_sum_max"))?,
        ],
    };
    Ok(Some(FrameRow {
        controls_id: r.try_get(0).map_err(decode("controls_id"))?,
        at: r.try_get(1).map_err(decode("controls.recorded_at"))?,
        channel: opt_vec_i32(22, "partials.channel")?,
        partial: opt_vec_i32(23, "partials.partial_index")?,
        frequency: opt_vec_f32(24, "partials.frequency")?,
        amplitude: opt_vec_f32(25, "partials.amplitude")?,
        state,
    }))
}

/// Reads the frames of the window in batches of [`BATCH_FRAMES`], gives
/// each its frame and episode index, and hands each batch to `send`; stops
/// early (without error) when `send` returns false.
pub async fn stream_frames(
    tx: &Transaction<'_>,
    plan: &Plan,
    layout: &Layout,
    episodes: &mut Episodes,
    counts: &mut Counts,
    mut send: impl FnMut(Batch) -> bool,
) -> Result<(), ExportError> {
    let stmt = tx
        .prepare_typed(
            FRAMES,
            &[Type::TEXT, Type::TIMESTAMPTZ, Type::TIMESTAMPTZ, Type::INT8],
        )
        .await
        .map_err(ExportError::query("preparing the frames query"))?;
    let tol = micros(plan.tolerance);
    let portal = tx
        .bind(&stmt, &[&plan.host, &plan.since, &plan.until, &tol])
        .await
        .map_err(ExportError::query("starting the frames query"))?;
    let slots = layout.channels * layout.partials;
    loop {
        let rows = tx
            .query_portal(&portal, BATCH_FRAMES as i32)
            .await
            .map_err(ExportError::query("reading frames"))?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut batch = layout.batch(rows.len());
        for r in &rows {
            let Some(f) = frame(r)? else {
                counts.dropped += 1;
                continue;
            };
            let episode = episodes.at(f.at);
            batch.push(layout, &f, counts.frames as i64, episode)?;
            counts.frames += 1;
            if f.state.linked {
                counts.linked += 1;
            } else {
                counts.by_time += 1;
            }
            if f.channel.len() < slots {
                counts.incomplete_partials += 1;
            }
        }
        let last = rows.len() < BATCH_FRAMES;
        if batch.rows > 0 && !send(batch) {
            return Ok(());
        }
        if last {
            return Ok(());
        }
    }
}
