//! What a board driver reports about its board.

use chrono::{DateTime, Utc};
use std::fmt;
use std::time::Duration;

/// State of the link to one board.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkState {
    /// The driver has not opened the port yet.
    Starting,
    /// The port could not be opened or failed; the driver retries.
    Disconnected {
        /// The last error.
        error: String,
        /// When the next attempt is due.
        retry_in: Duration,
    },
    /// The port is open and the board is running its bootloader.
    WaitingForReset,
    /// Polls succeed.
    Connected,
    /// The port is open but the board stopped answering polls. The driver
    /// keeps polling and never reopens the port for this, because opening it
    /// again would reset the board.
    Unresponsive {
        /// Consecutive polls without a valid reply.
        missed: u32,
    },
    /// The driver stopped (shutdown).
    Stopped,
}

impl LinkState {
    /// Short name for logs and status lines.
    pub fn name(&self) -> &'static str {
        match self {
            LinkState::Starting => "starting",
            LinkState::Disconnected { .. } => "disconnected",
            LinkState::WaitingForReset => "waiting-for-reset",
            LinkState::Connected => "connected",
            LinkState::Unresponsive { .. } => "unresponsive",
            LinkState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkState::Disconnected { error, retry_in } => {
                write!(f, "disconnected ({error}; retry in {retry_in:?})")
            }
            LinkState::Unresponsive { missed } => write!(f, "unresponsive ({missed} polls missed)"),
            other => f.write_str(other.name()),
        }
    }
}

/// Everything known about one board, published on every change.
#[derive(Debug, Clone, PartialEq)]
pub struct BoardStatus {
    /// Board name from the configuration.
    pub name: String,
    /// Link state.
    pub link: LinkState,
    /// Counters from the latest successful poll (`None` before the first one).
    /// They stay at their last value while the board is away, see `trusted`.
    pub positions: Option<Vec<i32>>,
    /// Per stepper: whether its counter is known to match the machine. False
    /// after a reset that was not restored, until the counter is set again
    /// (set_stepper, as calibration does).
    pub trusted: Vec<bool>,
    /// When the latest successful poll was read.
    pub last_good_poll: Option<DateTime<Utc>>,
    /// Successful polls since start.
    pub polls_ok: u64,
    /// Failed polls (timeout or malformed reply) since start.
    pub polls_failed: u64,
    /// Board resets detected since start.
    pub resets_detected: u64,
    /// Times the port was opened since start.
    pub connects: u64,
    /// Bytes the decoder threw away as noise since start.
    pub noise_bytes: u64,
    /// The last error of any kind, for the operator.
    pub last_error: Option<String>,
    /// Free RAM the board reported, if asked.
    pub free_memory: Option<i32>,
    /// The move the board was given and has not been confirmed yet: while it
    /// is set the stepper is in transit and its counter is not a position.
    pub moving: Option<InTransit>,
    /// The last move sent, kept once it ended (its `expected` is the
    /// duration predicted from the speed the board was last given).
    pub last_move: Option<InTransit>,
    /// Since when polls have failed one after another (`None` while the
    /// board answers): with `moving`, how long a board has been busy.
    pub silent_since: Option<DateTime<Utc>>,
    /// Steppers being jogged at the machine right now (local indices): their
    /// counters change between polls, so they are in transit too.
    pub jogging: Vec<usize>,
    /// What the driver concluded from counters that changed without a
    /// command, counted since start.
    pub judgements: Judgements,
    /// The last restore of counters after a reset, how it was paced.
    pub last_restore: Option<RestoreReport>,
    /// The motor parameters the board holds: the last set sent to it since
    /// it last reset (`None` until sent after a connect or a reset; moves
    /// are refused meanwhile).
    pub motor: Option<MotorReport>,
    /// Times a full set of motor parameters was sent since start.
    pub motor_sends: u64,
}

/// The motor parameters a board was given, and how they were paced.
#[derive(Debug, Clone, PartialEq)]
pub struct MotorReport {
    /// The commands sent, in order (every one consumed by the board).
    pub writes: Vec<crate::config::MotorWrite>,
    /// When the last batch was confirmed.
    pub at: DateTime<Utc>,
    /// Batches (each confirmed by a positions reply).
    pub batches: usize,
    /// Most bytes sent and not yet confirmed consumed by the board at once.
    pub max_bytes_in_flight: usize,
    /// From the first write to the last confirming reply.
    pub took: Duration,
}

/// A move sent to the board and not yet confirmed by a positions reply.
#[derive(Debug, Clone, PartialEq)]
pub struct InTransit {
    /// Local stepper index.
    pub stepper: usize,
    /// `amove` or `rmove`.
    pub op: String,
    /// The counter it was sent toward.
    pub target: i32,
    /// The counter when it was sent.
    pub from: i32,
    /// When it was sent.
    pub since: DateTime<Utc>,
    /// How long it should take (steps / speed, margin included).
    pub expected: Duration,
}

/// Counts of the driver's judgements on counters that changed with no
/// command from the host (see `driver::judge`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Judgements {
    /// Jogs at the machine (counter changes the driver kept as true).
    pub jogs: u64,
    /// Resets recognised because every counter read 0.
    pub resets_all_zero: u64,
    /// Resets recognised from the board's silence followed by changed
    /// counters (a reset followed by motion).
    pub resets_after_silence: u64,
    /// Counters distrusted because they moved after a reset.
    pub moved_after_reset: u64,
}

/// How a restore of counters after a reset went.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreReport {
    /// Counters written.
    pub counters: usize,
    /// Most bytes sent and not yet confirmed consumed by the board at once.
    pub max_bytes_in_flight: usize,
    /// Batches (each confirmed by a positions reply).
    pub batches: usize,
    /// From the first write to the verifying reply.
    pub took: Duration,
    /// Whether every counter read back as written.
    pub verified: bool,
}

impl BoardStatus {
    /// Initial status of a board with `steppers` steppers.
    pub fn new(name: &str, steppers: usize) -> BoardStatus {
        BoardStatus {
            name: name.to_string(),
            link: LinkState::Starting,
            positions: None,
            trusted: vec![false; steppers],
            last_good_poll: None,
            polls_ok: 0,
            polls_failed: 0,
            resets_detected: 0,
            connects: 0,
            noise_bytes: 0,
            last_error: None,
            free_memory: None,
            moving: None,
            last_move: None,
            silent_since: None,
            jogging: Vec::new(),
            judgements: Judgements::default(),
            last_restore: None,
            motor: None,
            motor_sends: 0,
        }
    }

    /// Whether positions are current and every counter is trusted.
    pub fn fully_trusted(&self) -> bool {
        self.link == LinkState::Connected
            && self.positions.is_some()
            && self.trusted.iter().all(|t| *t)
    }
}

/// Events other parts react to (snapshots on reconnect or reset, logs).
#[derive(Debug, Clone, PartialEq)]
pub enum BoardEvent {
    /// The port was opened and the first poll succeeded.
    Connected {
        /// Board name.
        board: String,
    },
    /// The link was lost.
    Disconnected {
        /// Board name.
        board: String,
        /// Why.
        error: String,
    },
    /// The board restarted its counters at 0 (all of them read 0, or it was
    /// silent for about its boot time and then counters had changed).
    ResetDetected {
        /// Board name.
        board: String,
        /// The counters before the reset.
        previous: Vec<i32>,
        /// Whether they were written back (otherwise they are untrusted).
        restored: bool,
        /// Steppers whose counters moved away from 0 after the reset
        /// (motion nobody commanded): untrusted, never restored.
        moved: Vec<usize>,
    },
    /// An operator jogged a stepper at the machine: its counter changed with
    /// no command and stays trusted (the firmware counted the steps).
    /// Raised when the jog is first seen (`ended: false`) and when its
    /// counter stops changing (`ended: true`).
    Jogged {
        /// Board name.
        board: String,
        /// Local stepper index.
        stepper: usize,
        /// Counter before the jog.
        from: i32,
        /// Counter now.
        to: i32,
        /// Whether the jog is over (the counter held still for a poll).
        ended: bool,
    },
    /// Counters changed by a move or a counter write the driver confirmed.
    PositionsChanged {
        /// Board name.
        board: String,
        /// New counters.
        positions: Vec<i32>,
    },
}
