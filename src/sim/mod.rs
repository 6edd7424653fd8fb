//! The firmware simulator: a pseudo-terminal that speaks the board protocol.
//!
//! [`firmware`] is the byte-exact model of the firmware; this module gives it
//! a real serial device. [`Simulator::spawn`] creates a pseudo-terminal, puts
//! a symlink to its slave device at the requested path (as udev does with
//! `/dev/serial/by-id/...`) and serves it from a dedicated OS thread, because
//! the firmware is blocking by nature: while it "moves" it reads nothing.
//!
//! Behaviour a host must live with, reproduced here:
//! - opening the device resets the board: counters return to 0 and the board
//!   is deaf for the reset window, during which it emits bootloader noise;
//! - bytes arrive at the line rate (115 200 baud, scaled by the speed
//!   scale) into a 63-byte receive ring that the firmware drains only when
//!   its loop comes round; while a move, a reply or a burst of messages
//!   keeps it busy, what does not fit is lost and recorded
//!   ([`SimHandle::rx_lost`]); replies start after the board's latency;
//! - unplugging ([`Fault::Vanish`]) removes the device node and hangs up the
//!   open descriptor; [`Fault::Reappear`] brings a new device at the same path;
//! - jog switches held at the machine ([`Fault::JogPress`]) move a stepper
//!   and its counter between messages; a reset can be followed by motion
//!   nobody commanded ([`Fault::ResetThenMotion`]), see [`jog`].
//!
//! The model also keeps the mechanism (see [`firmware`]): a physical position
//! per stepper that only moves change, a string contact per Z stepper and a
//! touch sensor reading per stepper ([`SimHandle::touching`]). Resets, and
//! counter writes like `set_stepper`, change counters only, so a test can
//! make the counters wrong and watch what a host does about it; a sensor can
//! be stuck on purpose ([`Fault::SensorStuck`]). The carriage has its limit
//! switches at X 0 and X max, read from its physical position
//! ([`SimHandle::x_switches`], [`Fault::XSwitchStuck`]). [`touch`] serves
//! those readings on a Unix socket for a daemon in another process.
//!
//! Every message received is kept in a timestamped [`TraceEntry`] list, and
//! every safety violation in a separate list, both readable through
//! [`SimHandle`] while the simulator runs.

pub mod audmon_db;
pub mod feed;
pub mod firmware;
pub mod jog;
mod pty;
pub mod touch;

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use firmware::{Board, Outcome, Profile, SafetyViolation, Uart, XSwitchState};

use crate::protocol::Op;

/// How a simulator is set up.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// The board it plays.
    pub profile: Profile,
    /// Multiplies every firmware timing's speed: 10.0 makes moves, reply
    /// pacing and the reset window ten times shorter. 1.0 is the real board.
    pub speed_scale: f64,
    /// How long the board is deaf after the port is opened, at scale 1.
    pub reset_window: Duration,
    /// Noise bytes the bootloader emits after a reset (no terminator).
    pub boot_noise: Vec<u8>,
}

impl SimOptions {
    /// Options for `profile` at real speed with the AVR's 2 s reset window.
    pub fn new(profile: Profile) -> SimOptions {
        SimOptions {
            profile,
            speed_scale: 1.0,
            reset_window: Duration::from_secs(2),
            boot_noise: b"\x00\xf0\x1e\x95junk\r\n".to_vec(),
        }
    }

    /// Scales a firmware duration by the speed scale.
    pub fn scaled(&self, d: Duration) -> Duration {
        if self.speed_scale > 0.0 && self.speed_scale.is_finite() {
            d.div_f64(self.speed_scale)
        } else {
            d
        }
    }
}

/// Faults a test can inject while the simulator runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Do not send the next reply at all.
    DropNextReply,
    /// Flip bytes in the middle of the next reply.
    CorruptNextReply,
    /// Write these bytes to the host now (noise, a half message).
    Noise(Vec<u8>),
    /// Stop answering anything until unmuted (a board that hangs).
    Mute(bool),
    /// Unplug: remove the device node and hang up whoever has it open.
    Vanish,
    /// Plug back in: a new device node at the same path.
    Reappear,
    /// Brown-out: the board resets (counters to 0, deaf window) while the port stays open.
    Reset,
    /// A reset followed by motion nobody commanded (a board that boots with
    /// switch inputs reading pressed): after the deaf window each listed
    /// (local stepper, steps) moves, counter and mechanism, before the
    /// firmware reads anything.
    ResetThenMotion(Vec<(usize, i32)>),
    /// An operator presses the jog switch of `stepper` (local index) and
    /// holds it: the firmware moves it toward its max (or min) at its speed,
    /// counting, until [`Fault::JogRelease`] or the limit (see [`jog`]).
    JogPress {
        /// Local stepper index.
        stepper: usize,
        /// Direction: toward the group's max, else its min.
        toward_max: bool,
    },
    /// The jog switch of `stepper` is released.
    JogRelease {
        /// Local stepper index.
        stepper: usize,
    },
    /// The touch sensor of `stepper` (local index on this board) reads
    /// `touching` whatever the mechanism does: a stuck or disconnected
    /// switch. `None` makes it healthy again. Applied at once, not when the
    /// firmware next looks: the sensor is wired to the host, not to the board.
    SensorStuck {
        /// Local stepper index; one past the board is ignored.
        stepper: usize,
        /// The forced reading, or `None` to clear the fault.
        touching: Option<bool>,
    },
    /// The carriage's home (`away` false) or away limit switch reads
    /// `pressed` whatever the carriage does: `Some(false)` is a switch
    /// disconnected or broken open, never pressed. `None` makes it healthy
    /// again. Applied at once, like [`Fault::SensorStuck`].
    XSwitchStuck {
        /// The away switch, else the home switch.
        away: bool,
        /// The forced reading, or `None` to clear the fault.
        pressed: Option<bool>,
    },
}

/// One entry of the simulator's trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceEntry {
    /// When the message was complete (its `;` was read).
    pub at: Instant,
    /// What happened.
    pub event: TraceEvent,
}

/// What a trace entry records.
#[derive(Debug, Clone, PartialEq)]
pub enum TraceEvent {
    /// A complete message and what the firmware did with it.
    Message {
        /// Raw bytes without the `;`.
        raw: Vec<u8>,
        /// Command number as the firmware read it.
        id: i32,
        /// Its meaning on this firmware.
        op: Option<Op>,
        /// Arguments as read.
        args: Vec<i32>,
        /// The outcome.
        outcome: Outcome,
    },
    /// A lone `;` (nothing before it in the parser): nothing executed. A
    /// host sends one to clear the parser after opening or an error.
    EmptyMessage,
    /// The command buffer filled up at 63 bytes without a `;` and
    /// restarted: those bytes are gone, what follows is a new message.
    DroppedOverlong {
        /// How many bytes were dropped.
        len: usize,
    },
    /// Bytes that arrived while the 63-byte receive ring was full (the
    /// firmware busy moving, replying, or executing a burst of messages
    /// faster than its loop): lost, as on the real board. A host that
    /// respects move durations and paces its writes never causes this.
    RxOverflow {
        /// How many bytes were lost.
        lost: usize,
    },
    /// Bytes that arrived while the firmware was busy (moving, replying) at all.
    ReceivedWhileBusy {
        /// How many.
        len: usize,
    },
    /// The port was opened (which resets the board).
    Opened,
    /// The board reset (port opened, or an injected brown-out).
    Reset,
    /// The reset window is over: the firmware listens again.
    Ready,
    /// Input arriving during the reset window, lost in the bootloader.
    LostInBootloader {
        /// How many bytes.
        len: usize,
    },
    /// A fault was injected.
    Fault(Fault),
    /// The message just before moved a motor: how far, at which speed and
    /// acceleration, and how long the firmware stayed deaf for it (the
    /// ramp and its loop time, scaled by the speed scale).
    Moved {
        /// Stepper index.
        stepper: usize,
        /// Steps turned.
        steps: u64,
        /// Speed it ran at, steps/s.
        speed: f64,
        /// Acceleration, steps/s².
        accel: f64,
        /// How long the firmware was busy with it.
        took: Duration,
    },
}

/// State shared between the simulator thread and its handle.
#[derive(Debug)]
struct Shared {
    board: Board,
    trace: Vec<TraceEntry>,
    violations: Vec<SafetyViolation>,
    /// Bytes lost in the receive ring so far.
    rx_lost: usize,
    /// Bytes received and done with (executed, or lost), since the start.
    rx_handled: usize,
    device: Option<PathBuf>,
}

/// A running simulator. Dropping it stops the thread and removes the link.
pub struct SimHandle {
    shared: Arc<Mutex<Shared>>,
    faults: mpsc::Sender<Control>,
    link: PathBuf,
    thread: Option<JoinHandle<()>>,
}

enum Control {
    Fault(Fault),
    Stop,
}

/// Errors starting a simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The pseudo-terminal could not be created or configured.
    #[error("cannot create a pseudo-terminal: {0}")]
    Pty(#[source] nix::Error),
    /// The link could not be created.
    #[error("cannot create the link {path}: {source}")]
    Link {
        /// The requested link path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The thread could not be started.
    #[error("cannot start the simulator thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The touch socket ([`touch::TouchServer`]) could not be set up.
    #[error("touch socket {}: cannot {what}: {source}", path.display())]
    TouchSocket {
        /// The socket path.
        path: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A live server already answers on the touch socket's path.
    #[error("touch socket {}: something already answers on it", .0.display())]
    TouchSocketInUse(PathBuf),
}

/// Entry point.
pub struct Simulator;

impl Simulator {
    /// Creates the pseudo-terminal, links it at `link` and starts serving it.
    /// An existing symlink at `link` is replaced; any other file there is an error.
    pub fn spawn(options: SimOptions, link: &Path) -> Result<SimHandle, SimError> {
        let port = pty::Port::create(link)?;
        let shared = Arc::new(Mutex::new(Shared {
            board: Board::new(options.profile.clone()),
            trace: Vec::new(),
            violations: Vec::new(),
            rx_lost: 0,
            rx_handled: 0,
            device: Some(port.device().to_path_buf()),
        }));
        let (tx, rx) = mpsc::channel();
        let runner = pty::Runner::new(options, port, link.to_path_buf(), shared.clone(), rx);
        let thread = std::thread::Builder::new()
            .name(format!("sim {}", link.display()))
            .spawn(move || runner.run())
            .map_err(SimError::Thread)?;
        Ok(SimHandle {
            shared,
            faults: tx,
            link: link.to_path_buf(),
            thread: Some(thread),
        })
    }
}

impl SimHandle {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A poisoned lock only means a test thread panicked; the data is still usable.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Injects a fault. A firmware fault takes effect when the firmware next
    /// looks (never mid-move); a sensor fault at once.
    pub fn inject(&self, fault: Fault) {
        if let Fault::SensorStuck { stepper, touching } = fault {
            let mut shared = self.lock();
            shared.board.set_sensor_stuck(stepper, touching);
            shared.trace.push(TraceEntry {
                at: Instant::now(),
                event: TraceEvent::Fault(fault),
            });
            return;
        }
        if let Fault::XSwitchStuck { away, pressed } = fault {
            let mut shared = self.lock();
            shared.board.set_x_switch_stuck(away, pressed);
            shared.trace.push(TraceEntry {
                at: Instant::now(),
                event: TraceEvent::Fault(fault),
            });
            return;
        }
        let _ = self.faults.send(Control::Fault(fault));
    }

    /// The symlink path hosts open.
    pub fn link(&self) -> &Path {
        &self.link
    }

    /// The pseudo-terminal device currently behind the link (`None` while unplugged).
    pub fn device(&self) -> Option<PathBuf> {
        self.lock().device.clone()
    }

    /// Each stepper's speed the firmware holds now, steps/s.
    pub fn speeds(&self) -> Vec<f64> {
        self.lock().board.speeds().to_vec()
    }

    /// Each stepper's acceleration the firmware holds now, steps/s².
    pub fn accels(&self) -> Vec<f64> {
        self.lock().board.accels().to_vec()
    }

    /// Each axis group's limits the firmware holds now, `(min, max)`.
    pub fn limits(&self) -> Vec<(i32, i32)> {
        self.lock().board.limits()
    }

    /// The firmware's counters now.
    pub fn counters(&self) -> Vec<i32> {
        self.lock().board.counters().to_vec()
    }

    /// Sets the firmware's counters directly, without motion: the physical
    /// positions stay (call [`SimHandle::set_physical`] too for steppers
    /// moved by hand).
    pub fn set_counters(&self, values: &[i32]) {
        self.lock().board.set_counters(values);
    }

    /// Where the motors physically are, in steps, in local index order.
    pub fn physical(&self) -> Vec<i64> {
        self.lock().board.physical().to_vec()
    }

    /// Puts the motors elsewhere without the firmware knowing (counters
    /// stay); values past the board are ignored, missing ones leave their
    /// stepper where it is.
    pub fn set_physical(&self, values: &[i64]) {
        self.lock().board.set_physical(values);
    }

    /// The string contact of every stepper, in physical steps (`None`: no string).
    pub fn contacts(&self) -> Vec<Option<i64>> {
        self.lock().board.contacts().to_vec()
    }

    /// Moves the strings: a Z stepper touches when its physical position is
    /// at or below its contact. Values past the board are ignored.
    pub fn set_contacts(&self, contacts: &[Option<i64>]) {
        self.lock().board.set_contacts(contacts);
    }

    /// What every stepper's touch sensor reads now, in local index order;
    /// always `false` for steppers without a string (X, tuners).
    pub fn touching(&self) -> Vec<bool> {
        self.lock().board.touching_all()
    }

    /// What the carriage's limit switches read now (`None`: this board has
    /// no X stepper); see [`firmware::Board::x_switches`].
    pub fn x_switches(&self) -> Option<XSwitchState> {
        self.lock().board.x_switches()
    }

    /// Puts the carriage's limit switches at these physical X positions
    /// (by default 0 and the X group's max, 2600).
    pub fn set_x_switch_positions(&self, home_at: i64, away_at: i64) {
        self.lock().board.set_x_switch_positions(home_at, away_at);
    }

    /// A copy of the trace so far.
    pub fn trace(&self) -> Vec<TraceEntry> {
        self.lock().trace.clone()
    }

    /// Messages received so far whose command means `op`.
    pub fn received(&self, op: Op) -> Vec<TraceEntry> {
        self.lock()
            .trace
            .iter()
            .filter(|e| matches!(&e.event, TraceEvent::Message { op: Some(o), .. } if *o == op))
            .cloned()
            .collect()
    }

    /// Safety violations recorded so far (a correct host causes none).
    pub fn violations(&self) -> Vec<SafetyViolation> {
        self.lock().violations.clone()
    }

    /// Bytes lost so far because they arrived while the board's receive ring
    /// was full (a host sending faster than the firmware reads; each loss is
    /// also a [`TraceEvent::RxOverflow`]). A correct host causes none.
    pub fn rx_lost(&self) -> usize {
        self.lock().rx_lost
    }

    /// Bytes the firmware is done with since the simulator started: taken
    /// from its receive ring and executed (busy time and reply included),
    /// or lost. A test that wrote N bytes can wait for this to reach N
    /// before it looks at the outcome. Bytes that arrive while the port is
    /// closed, during the reset window or while muted are not counted.
    pub fn rx_handled(&self) -> usize {
        self.lock().rx_handled
    }

    /// Waits (polling every 5 ms) until `pred` holds for the trace, or `timeout`.
    pub fn wait_for_trace(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[TraceEntry]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.lock().trace) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the simulator and removes its link.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.faults.send(Control::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
