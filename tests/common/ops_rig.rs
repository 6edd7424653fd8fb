//! The operations rig: one 5-stepper v2 simulator (X 0, Z 1..4, two
//! strings) with its touch sensors, a driver, the motion gate, the snapshot
//! engine (event snapshots only) and a spool: everything `ops::Machine`
//! works with, real parts throughout.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use stringdriverd::board::{self, BoardHandle, SerialConnector};
use stringdriverd::feed::{FeedState, FeedStatus, FeedValues};
use stringdriverd::motion::MotionGate;
use stringdriverd::ops::Machine;
use stringdriverd::protocol::{Firmware, Op};
use stringdriverd::sensors::{SensorError, SimulatedSensors, TouchSensors};
use stringdriverd::sim::{Profile, SimHandle, TraceEvent};
use stringdriverd::snapshot::{self, Settings, Sources};
use stringdriverd::store::{Record, Spool, SpoolHandle};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One v2 board with X 0 and Z 1..4 (two strings); Z travel 0..40.
pub const CONFIG: &str = r#"
host = "ops-test"
[[boards]]
name = "carriage"
port = "/dev/null"
int_bytes = 2
firmware = "v2"
steppers = 5
[layout]
strings = 2
x_index = 0
z_first_index = 1
z_min = -100
z_max = 40
[operations]
z_rest = 0.02
lap_rest = 0.02
[thresholds]
voice_count_min = 4
"#;

/// The touch sensors with a log of every read: which stepper, when (on the
/// same clock as the simulator's trace), what it read.
pub struct RecordingSensors {
    inner: SimulatedSensors,
    /// Every read so far.
    pub reads: Mutex<Vec<(usize, std::time::Instant, bool)>>,
    /// Reads after this many (counted from the start) fail, as a broken
    /// sensor line would.
    pub fail_after: std::sync::atomic::AtomicUsize,
}

impl TouchSensors for RecordingSensors {
    fn read(&self, stepper: usize) -> Result<bool, SensorError> {
        let done = self.reads.lock().unwrap_or_else(|e| e.into_inner()).len();
        if done >= self.fail_after.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(SensorError::Simulator {
                stepper,
                detail: "the sensor line broke (test)".into(),
            });
        }
        let r = self.inner.read(stepper)?;
        self.reads.lock().unwrap_or_else(|e| e.into_inner()).push((
            stepper,
            std::time::Instant::now(),
            r,
        ));
        Ok(r)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

impl RecordingSensors {
    /// The reads so far.
    pub fn log(&self) -> Vec<(usize, std::time::Instant, bool)> {
        self.reads.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Everything the operations work with, and the handles a test drives.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub sims: Arc<Vec<SimHandle>>,
    pub board: BoardHandle,
    pub machine: Machine,
    pub settings: Arc<watch::Sender<Settings>>,
    pub feed: watch::Sender<FeedStatus>,
    pub spool: SpoolHandle,
    pub interval: watch::Sender<Duration>,
    pub shutdown: CancellationToken,
    /// The sensors the machine reads, with their log.
    pub sensors: Arc<RecordingSensors>,
}

impl Rig {
    /// Runs z_adjust on a feed whose channels sound `voices` partials each
    /// (every amp_sum a mid-range 50).
    pub async fn z_adjust(&self, voices: Vec<i32>) -> stringdriverd::ops::Outcome {
        let amps = vec![50.0; voices.len()];
        self.feed.send_replace(feed_with(voices, amps));
        self.machine
            .run(stringdriverd::store::OperationType::ZAdjust, None)
            .await
            .expect("runs")
    }
}

/// An `ok` feed with these values.
pub fn feed_with(voices: Vec<i32>, amps: Vec<f32>) -> FeedStatus {
    FeedStatus {
        state: FeedState::Ok,
        channels: voices.len(),
        values: Some(FeedValues {
            voice_count: voices,
            amp_sum: amps,
        }),
        ..FeedStatus::new()
    }
}

/// `physical` and `counters` for the 5 steppers.
pub async fn rig(physical: [i64; 5], counters: [i32; 5]) -> Rig {
    let cfg = stringdriverd::config::parse(CONFIG, Path::new("ops.toml")).expect("config");
    let mut opts = sim_options(Firmware::V2);
    opts.profile = Profile::for_firmware(Firmware::V2, Some(5));
    let (dir, sim) = start_sim(opts.clone());
    let spec = spec_for(&opts, sim.link().to_path_buf());
    let shutdown = CancellationToken::new();
    let connector = Arc::new(SerialConnector {
        path: spec.port.clone(),
        baud: spec.baud,
    });
    let (board, _t) = board::spawn(spec, connector, None, shutdown.clone());
    connected(&board).await;
    for (s, c) in counters.iter().enumerate() {
        board.set_stepper(s, *c).await.expect("set counter");
    }
    sim.set_physical(&physical);
    let sims = Arc::new(vec![sim]);
    let layout = Arc::new(cfg.layout.clone());
    let settings = Settings {
        operations: cfg.operations.clone(),
        thresholds: cfg.thresholds.clone(),
        enabled: stringdriverd::daemon::initial_enables(&cfg),
    };
    let (settings_tx, settings_rx) = watch::channel(settings);
    let settings_tx = Arc::new(settings_tx);
    let (feed_tx, feed_rx) = watch::channel(feed_with(vec![6, 6], vec![50.0, 50.0]));
    let (s, _) = Spool::open(&dir.path().join("spool.sqlite"), 1 << 30).expect("spool");
    let spool = SpoolHandle::new(s);
    let sources = Sources {
        host: "ops-test".into(),
        layout: layout.clone(),
        boards: vec![board.watch()],
        settings: settings_rx.clone(),
        feed: feed_rx.clone(),
        controls: None,
    };
    // Only event snapshots here: the timer is an hour.
    let (interval_tx, interval) = watch::channel(Duration::from_secs(3600));
    let (snapshots, _st) = snapshot::spawn(sources, spool.clone(), interval, shutdown.clone());
    let gate = MotionGate::new(vec![board.clone()], layout.clone(), settings_rx);
    let sensors = Arc::new(RecordingSensors {
        inner: SimulatedSensors::from_handles(&layout, sims.clone()),
        reads: Mutex::new(Vec::new()),
        fail_after: std::sync::atomic::AtomicUsize::new(usize::MAX),
    });
    let b = board.clone();
    let machine = Machine {
        host: "ops-test".into(),
        layout,
        gate,
        sensors: sensors.clone(),
        settings: settings_tx.clone(),
        feed: feed_rx,
        snapshots,
        spool: spool.clone(),
        positions: Arc::new(move || b.status().positions.unwrap_or_default()),
        progress: tokio::sync::broadcast::channel(64).0,
    };
    Rig {
        dir,
        sims,
        board,
        machine,
        settings: settings_tx,
        feed: feed_tx,
        spool,
        interval: interval_tx,
        shutdown,
        sensors,
    }
}

/// Every record in the spool, in order.
pub async fn spooled(spool: &SpoolHandle) -> Vec<Record> {
    spool
        .peek(100_000)
        .await
        .expect("peek")
        .into_iter()
        .map(|s| s.record)
        .collect()
}

/// The operation events in the spool, in order.
pub async fn events(spool: &SpoolHandle) -> Vec<stringdriverd::store::OperationEvent> {
    spooled(spool)
        .await
        .into_iter()
        .filter_map(|r| match r {
            Record::Operation { event } => Some(event),
            _ => None,
        })
        .collect()
}

/// When the simulator received each move (amove/rmove) and counter write
/// (set_stepper) of `stepper` (local index), in order.
pub fn writes_to(sim: &SimHandle, stepper: usize) -> Vec<(std::time::Instant, Op)> {
    sim.trace()
        .iter()
        .filter_map(|e| match &e.event {
            TraceEvent::Message {
                op: Some(op @ (Op::Amove | Op::Rmove | Op::SetStepper)),
                args,
                ..
            } if args.first() == Some(&(stepper as i32)) => Some((e.at, *op)),
            _ => None,
        })
        .collect()
}

/// Moves the simulator received so far.
pub fn moves(sim: &SimHandle) -> usize {
    sim.trace()
        .iter()
        .filter(|e| {
            matches!(
                &e.event,
                TraceEvent::Message {
                    op: Some(Op::Amove | Op::Rmove),
                    ..
                }
            )
        })
        .count()
}

/// One `operations` row as the daemon-level tests read it back from PostgreSQL.
#[derive(Debug, Clone)]
pub struct OpRow {
    pub id: uuid::Uuid,
    pub kind: String,
    pub status: String,
    pub message: Option<String>,
    pub recorded_at: chrono::DateTime<chrono::Utc>,
    pub completed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub final_positions: Vec<i32>,
}

/// The `operations` rows of `host`, oldest start first.
pub async fn op_rows(client: &tokio_postgres::Client, host: &str) -> Vec<OpRow> {
    client
        .query(
            "SELECT operation_id, operation_type, operation_status, message, recorded_at, \
             completed_at, final_positions FROM operations WHERE host = $1 \
             ORDER BY recorded_at, operation_id",
            &[&host],
        )
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| OpRow {
            id: r.get(0),
            kind: r.get(1),
            status: r.get(2),
            message: r.get(3),
            recorded_at: r.get(4),
            completed_at: r.get(5),
            final_positions: r.get(6),
        })
        .collect()
}

/// Waits until `host`'s rows in PostgreSQL satisfy `done` (they arrive as
/// the shipper ships them) and returns them.
pub async fn wait_rows(
    client: &tokio_postgres::Client,
    host: &str,
    what: &str,
    done: impl Fn(&[OpRow]) -> bool,
) -> Vec<OpRow> {
    let deadline = tokio::time::Instant::now() + super::machine::WAIT;
    loop {
        let rows = op_rows(client, host).await;
        if done(&rows) {
            return rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited for {what}; rows: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the simulator has received `n` moves in all.
pub async fn wait_moves(sim: &SimHandle, n: usize) {
    let deadline = tokio::time::Instant::now() + super::machine::WAIT;
    while moves(sim) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited for {n} moves"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
