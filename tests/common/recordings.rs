//! Generated recordings of a host: what audmon and the daemon would have
//! written to PostgreSQL over a stretch of time, for the export, report and
//! benchmark tests.
//!
//! [`insert`] writes, for one host, into a migrated database:
//! - `controls` rows (one per audio frame) at `fps`, with pauses in the audio
//!   ([`Recording::frame_gaps`]), and for each frame `channels × partials`
//!   `partials` rows linked by `controls_id` (empty slots, amplitude 0,
//!   included, as audmon writes them);
//! - `machine_state` timer snapshots every [`Recording::state_period`] with
//!   `controls_id` NULL (linked only by time), none inside
//!   [`Recording::state_gaps`], and, every [`Recording::link_every`] frames, a
//!   snapshot linked to that frame by `controls_id`, recorded
//!   [`LINK_DELAY`] after it (as `snapshot.link = latest` links a later
//!   snapshot to the newest frame);
//! - `operations`: [`Recording::sweeps`] top-level sweeps, each with nested
//!   children (three `z_adjust`, the second holding a `bump_check`), with
//!   every terminal status, and the last sweep still running (status
//!   `started`, `completed_at` NULL). Nesting is by time: the schema has no
//!   parent column, a child runs inside its parent's [start, end];
//! - `stepper_roles`: x, then z_in/z_out per string, then one tuner per
//!   string (`1 + 3 × channels` steppers), as a daemon writes them.
//!
//! Everything is a function of the parameters and the seed, so two runs
//! write identical rows. Rows go in with `COPY … FROM STDIN` in text format,
//! streamed in bounded chunks, so the same path fills a benchmark's million
//! frames without holding them in memory.

use std::fmt::Write as _;

use bytes::Bytes;
use chrono::{DateTime, Duration, SecondsFormat, TimeZone, Utc};
use futures::SinkExt;
use tokio_postgres::Client;
use uuid::Uuid;

/// How long after its frame a linked snapshot is recorded.
pub const LINK_DELAY: Duration = Duration::milliseconds(10);

/// Bytes of COPY text sent per chunk.
const CHUNK: usize = 1 << 20;

/// What to generate for one host.
#[derive(Debug, Clone)]
pub struct Recording {
    /// `host` of every row.
    pub host: String,
    /// Time of the first frame.
    pub start: DateTime<Utc>,
    /// Number of `controls` frames.
    pub frames: u64,
    /// Audio frames per second.
    pub fps: f64,
    /// Audio channels (= strings).
    pub channels: usize,
    /// Partials per channel.
    pub partials: usize,
    /// Seed of the values and of the ids: two recordings in one database
    /// need different seeds.
    pub seed: u64,
    /// `(i, pause)`: the audio stops for `pause` before frame `i`.
    pub frame_gaps: Vec<(u64, Duration)>,
    /// Period of the timer snapshots (controls_id NULL).
    pub state_period: Duration,
    /// `(offset from start, length)`: no timer snapshot in that span.
    pub state_gaps: Vec<(Duration, Duration)>,
    /// Every this many frames (frame 0 included) a snapshot linked by
    /// controls_id; 0: none.
    pub link_every: u64,
    /// Top-level sweeps, each with nested children; 0: no operations.
    pub sweeps: u64,
}

impl Recording {
    /// A small recording of `frames` frames at 4 fps from 2026-11-01 12:00
    /// UTC: 3 channels × 4 partials, a timer snapshot per second, every 5th
    /// frame linked, one 3 s pause in the audio before frame `frames / 2`,
    /// no timer snapshot for 5 s from 25 % of the way, two sweeps.
    pub fn small(host: &str, frames: u64, seed: u64) -> Recording {
        let span = Duration::milliseconds((frames as f64 / 4.0 * 1000.0) as i64);
        Recording {
            host: host.to_string(),
            start: Utc
                .with_ymd_and_hms(2026, 11, 1, 12, 0, 0)
                .single()
                .expect("valid time"),
            frames,
            fps: 4.0,
            channels: 3,
            partials: 4,
            seed,
            frame_gaps: vec![(frames / 2, Duration::seconds(3))],
            state_period: Duration::seconds(1),
            state_gaps: vec![(span / 4, Duration::seconds(5))],
            link_every: 5,
            sweeps: 2,
        }
    }

    /// Number of steppers: x, two Z per string, a tuner per string.
    pub fn steppers(&self) -> usize {
        1 + 3 * self.channels
    }

    /// Time of frame `i`.
    pub fn frame_time(&self, i: u64) -> DateTime<Utc> {
        let pauses: Duration = self
            .frame_gaps
            .iter()
            .filter(|(at, _)| *at <= i)
            .map(|(_, d)| *d)
            .sum();
        self.start + Duration::microseconds((i as f64 * 1e6 / self.fps) as i64) + pauses
    }

    /// Time of the last frame (the start when there are none).
    pub fn end(&self) -> DateTime<Utc> {
        self.frame_time(self.frames.saturating_sub(1))
    }

    /// `controls_id` of frame `i`.
    pub fn controls_id(&self, i: u64) -> Uuid {
        self.id(1, i)
    }

    /// `state_id` of timer snapshot `k` (the k-th period, counted from the
    /// start, gaps included) or of the snapshot linked to frame `i`.
    pub fn state_id(&self, linked: bool, n: u64) -> Uuid {
        self.id(if linked { 3 } else { 2 }, n)
    }

    fn id(&self, kind: u64, n: u64) -> Uuid {
        Uuid::from_u64_pair(
            0x5d0e_0000_0000_0000 | (self.seed & 0xffff_ffff) << 8 | kind,
            n,
        )
    }

    fn in_state_gap(&self, at: DateTime<Utc>) -> bool {
        self.state_gaps
            .iter()
            .any(|(off, len)| at >= self.start + *off && at < self.start + *off + *len)
    }
}

/// What [`insert`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inserted {
    /// `controls` rows.
    pub frames: u64,
    /// `partials` rows.
    pub partials: u64,
    /// `machine_state` rows (timer and linked).
    pub states: u64,
    /// Of which linked by controls_id.
    pub linked_states: u64,
    /// `operations` rows.
    pub operations: u64,
}

/// A deterministic stream of numbers (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Streams COPY text rows into one table in bounded chunks.
struct Copy<'a> {
    sink: std::pin::Pin<Box<tokio_postgres::CopyInSink<Bytes>>>,
    buf: String,
    _client: std::marker::PhantomData<&'a Client>,
}

impl<'a> Copy<'a> {
    async fn start(client: &'a Client, table_and_columns: &str) -> Copy<'a> {
        let sink = client
            .copy_in(&format!("COPY {table_and_columns} FROM STDIN"))
            .await
            .unwrap_or_else(|e| panic!("COPY {table_and_columns}: {e}"));
        Copy {
            sink: Box::pin(sink),
            buf: String::with_capacity(CHUNK + 4096),
            _client: std::marker::PhantomData,
        }
    }

    /// The row buffer; call [`Copy::flush_if_full`] after each row.
    fn row(&mut self) -> &mut String {
        &mut self.buf
    }

    async fn flush_if_full(&mut self) {
        if self.buf.len() >= CHUNK {
            let chunk = std::mem::take(&mut self.buf);
            self.sink
                .send(Bytes::from(chunk))
                .await
                .expect("COPY chunk");
            self.buf.reserve(CHUNK + 4096);
        }
    }

    async fn finish(mut self) -> u64 {
        if !self.buf.is_empty() {
            let chunk = std::mem::take(&mut self.buf);
            self.sink
                .send(Bytes::from(chunk))
                .await
                .expect("COPY chunk");
        }
        self.sink.as_mut().finish().await.expect("COPY finish")
    }
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn array<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let mut s = String::from("{");
    for (i, v) in items.into_iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{v}");
    }
    s.push('}');
    s
}

/// The partials of frame `i`: per channel, `(frequency, amplitude)` slots;
/// the first `voices` slots sound, the rest are empty (0, 0).
pub fn frame_partials(rec: &Recording, i: u64) -> Vec<Vec<(f32, f32)>> {
    let mut rng = Rng(rec.seed ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d));
    (0..rec.channels)
        .map(|c| {
            let voices = (rng.next() % (rec.partials as u64 + 1)) as usize;
            let base = 110.0 * (c as f64 + 1.0) + rng.unit() * 2.0;
            (0..rec.partials)
                .map(|k| {
                    if k < voices {
                        let f = base * (k as f64 + 1.0) + rng.unit();
                        let a = 0.5 + rng.unit() * 20.0;
                        (f as f32, a as f32)
                    } else {
                        (0.0, 0.0)
                    }
                })
                .collect()
        })
        .collect()
}

/// Writes one machine_state row in COPY text format.
fn state_row(
    out: &mut String,
    rec: &Recording,
    state_id: Uuid,
    controls_id: Option<Uuid>,
    at: DateTime<Utc>,
    n: u64,
) {
    let s = rec.steppers();
    let ch = rec.channels;
    let mut rng = Rng(rec.seed ^ 0x51a7e ^ n.wrapping_mul(0x9e37_79b9));
    let positions = (0..s).map(|k| ((n as i64 * 7 + k as i64 * 13) % 2000 - 1000) as i32);
    let enabled = (0..s).map(|k| if (n + k as u64) % 5 == 0 { 'f' } else { 't' });
    let voice: Vec<i32> = (0..ch)
        .map(|_| (rng.next() % (rec.partials as u64 + 1)) as i32)
        .collect();
    let amp: Vec<f32> = (0..ch).map(|_| (rng.unit() * 100.0) as f32).collect();
    let _ = writeln!(
        out,
        "{state_id}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
        controls_id.map_or_else(|| "\\N".to_string(), |c| c.to_string()),
        rec.host,
        ts(at),
        array(positions),
        array(enabled),
        if n % 2 == 0 { 't' } else { 'f' },
        1 + (n % 3) as i32,
        -1 - (n % 4) as i32,
        0.5 + (n % 10) as f32 * 0.25,
        1.0 + (n % 7) as f32 * 0.5,
        0.25 + (n % 3) as f32 * 0.125,
        2.0 + (n % 5) as f32,
        1 + (n % 6) as i32,
        40 + (n % 20) as i32,
        30 + (n % 11) as i32,
        50 + (n % 13) as i32,
        array(voice),
        array(amp),
        array((0..ch).map(|c| c as i32)),
        array((0..ch).map(|c| 8 + c as i32)),
        array((0..ch).map(|c| 10 + 5 * c as i32)),
        array((0..ch).map(|c| 90 + 5 * c as i32)),
    );
}

const STATE_COLUMNS: &str = "machine_state (state_id, controls_id, host, recorded_at, \
    stepper_positions, stepper_enabled, bump_check_enable, z_up_step, z_down_step, \
    tune_rest, x_rest, z_rest, lap_rest, adjustment_level, retry_threshold, delta_threshold, \
    z_variance_threshold, voice_count, amp_sum, voice_count_min, voice_count_max, \
    amp_sum_min, amp_sum_max)";

/// Writes `rec` into the migrated database of `client` and says what it
/// wrote. Panics on any database error (it is a test helper).
pub async fn insert(client: &Client, rec: &Recording) -> Inserted {
    let mut done = Inserted::default();
    insert_roles(client, rec).await;

    // controls, then partials (they reference controls).
    let mut copy = Copy::start(client, "controls (controls_id, host, recorded_at)").await;
    for i in 0..rec.frames {
        let _ = writeln!(
            copy.row(),
            "{}\t{}\t{}",
            rec.controls_id(i),
            rec.host,
            ts(rec.frame_time(i))
        );
        copy.flush_if_full().await;
    }
    done.frames = copy.finish().await;

    let mut copy = Copy::start(
        client,
        "partials (controls_id, channel, partial_index, frequency, amplitude)",
    )
    .await;
    for i in 0..rec.frames {
        let id = rec.controls_id(i);
        for (c, slots) in frame_partials(rec, i).iter().enumerate() {
            for (k, (f, a)) in slots.iter().enumerate() {
                let _ = writeln!(copy.row(), "{id}\t{c}\t{k}\t{f}\t{a}");
            }
        }
        copy.flush_if_full().await;
    }
    done.partials = copy.finish().await;

    let mut copy = Copy::start(client, STATE_COLUMNS).await;
    // Timer snapshots over the whole span of the frames.
    let period_us = rec
        .state_period
        .num_microseconds()
        .unwrap_or(1_000_000)
        .max(1);
    let span_us = (rec.end() - rec.start).num_microseconds().unwrap_or(0);
    let mut states = 0;
    for k in 0..=(span_us / period_us) as u64 {
        let at = rec.start + Duration::microseconds(k as i64 * period_us);
        if rec.in_state_gap(at) {
            continue;
        }
        state_row(copy.row(), rec, rec.state_id(false, k), None, at, k);
        states += 1;
        copy.flush_if_full().await;
    }
    if rec.link_every > 0 {
        for i in (0..rec.frames).step_by(rec.link_every as usize) {
            let at = rec.frame_time(i) + LINK_DELAY;
            let n = 1_000_000_000 + i;
            state_row(
                copy.row(),
                rec,
                rec.state_id(true, i),
                Some(rec.controls_id(i)),
                at,
                n,
            );
            done.linked_states += 1;
            copy.flush_if_full().await;
        }
    }
    done.states = copy.finish().await;
    assert_eq!(done.states, states + done.linked_states);

    done.operations = insert_operations(client, rec).await;
    done
}

/// One operation: type, start, end (None: still running), status, message,
/// stepper indices.
type Op = (
    &'static str,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    &'static str,
    Option<String>,
    Vec<i32>,
);

/// The operations of `rec`, parents before their children, in start order.
pub fn operations(rec: &Recording) -> Vec<Op> {
    let mut ops = Vec::new();
    if rec.sweeps == 0 || rec.frames == 0 {
        return ops;
    }
    let span = rec.end() - rec.start;
    let slot = span / rec.sweeps as i32;
    let zs: Vec<i32> = (0..rec.channels as i32 * 2).map(|k| 1 + k).collect();
    for s in 0..rec.sweeps {
        let start = rec.start + slot * s as i32 + slot / 10;
        let len = slot * 6 / 10;
        let last = s + 1 == rec.sweeps;
        let (end, status, message) = if last {
            (None, "started", None)
        } else if s % 2 == 0 {
            (
                Some(start + len),
                "completed",
                Some("sweep done".to_string()),
            )
        } else {
            (
                Some(start + len),
                "cancelled",
                Some("stopped by request".to_string()),
            )
        };
        ops.push(("sweep_left_right", start, end, status, message, {
            let mut v = vec![0];
            v.extend(&zs);
            v
        }));
        // Children at 10-30 %, 40-70 % and 75-90 % of the sweep.
        let at = |f: i32| start + len * f / 100;
        ops.push((
            "z_adjust",
            at(10),
            Some(at(30)),
            "completed",
            Some("3 moves".to_string()),
            zs.clone(),
        ));
        ops.push((
            "z_adjust",
            at(40),
            Some(at(70)),
            "failed",
            Some("retry threshold reached on string 1".to_string()),
            zs.clone(),
        ));
        ops.push((
            "bump_check",
            at(45),
            Some(at(55)),
            "completed",
            None,
            zs.clone(),
        ));
        ops.push((
            "z_adjust",
            at(75),
            Some(at(90)),
            "cancelled",
            None,
            zs.clone(),
        ));
    }
    ops
}

async fn insert_operations(client: &Client, rec: &Recording) -> u64 {
    let mut copy = Copy::start(
        client,
        "operations (operation_id, state_id, host, recorded_at, operation_type, \
         operation_status, message, stepper_indices, final_positions, completed_at)",
    )
    .await;
    let null = || "\\N".to_string();
    for (n, (kind, start, end, status, message, steppers)) in
        operations(rec).into_iter().enumerate()
    {
        let finals = array(steppers.iter().map(|k| k * 10));
        let _ = writeln!(
            copy.row(),
            "{}\t\\N\t{}\t{}\t{kind}\t{status}\t{}\t{}\t{finals}\t{}",
            rec.id(4, n as u64),
            rec.host,
            ts(start),
            message.unwrap_or_else(null),
            array(steppers),
            end.map_or_else(null, ts),
        );
    }
    copy.finish().await
}

async fn insert_roles(client: &Client, rec: &Recording) {
    let ch = rec.channels as i32;
    let mut index = Vec::new();
    let mut board = Vec::new();
    let mut local = Vec::new();
    let mut role = Vec::new();
    let mut string: Vec<Option<i32>> = Vec::new();
    for g in 0..rec.steppers() as i32 {
        let (b, l, r, s) = if g == 0 {
            ("carriage", 0, "x", None)
        } else if g <= 2 * ch {
            let s = (g - 1) / 2;
            let r = if (g - 1) % 2 == 0 { "z_in" } else { "z_out" };
            ("carriage", g, r, Some(s))
        } else {
            let s = g - 1 - 2 * ch;
            ("tuners", s, "tuner", Some(s))
        };
        index.push(g);
        board.push(b);
        local.push(l);
        role.push(r);
        string.push(s);
    }
    client
        .execute(
            "INSERT INTO stepper_roles (host, stepper_index, board, local_index, role, string_index) \
             SELECT $1, * FROM unnest($2::int4[], $3::text[], $4::int4[], $5::text[], $6::int4[])",
            &[&rec.host, &index, &board, &local, &role, &string],
        )
        .await
        .expect("insert stepper_roles");
}

/// A fresh migrated test database with `recordings` inserted, and what each
/// wrote.
pub async fn database_with(recordings: &[Recording]) -> (super::pg::TestDb, Client, Vec<Inserted>) {
    let db = super::pg::TestDb::create().await;
    let mut client = db.client().await;
    stringdriverd::store::migrate::migrate(&mut client)
        .await
        .expect("migrate");
    let mut done = Vec::new();
    for rec in recordings {
        done.push(insert(&client, rec).await);
    }
    (db, client, done)
}
