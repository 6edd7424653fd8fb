//! The motion gate: the one place every move passes through, whoever asks
//! for it (an operation, the control API, the GUI compatibility socket).
//!
//! In order, for every move:
//! 1. one operation at a time: while an operation runs, only its own moves
//!    pass; a cancelled operation's next move is refused (cancel takes
//!    effect before the next move);
//! 2. the stepper exists and is enabled;
//! 3. its counter is known (board connected, counters read) — and, for
//!    moves not made by an operation, trusted (an operator's manual move on a
//!    counter nobody vouches for could go anywhere);
//! 4. the target lies inside the stepper's configured limits — refused
//!    before anything reaches the board;
//! 5. the stepper's rest since its previous move (x_rest, z_rest, tune_rest
//!    by role) has elapsed — the gate waits for it, whoever asked;
//! 6. one move at a time through the gate; the board driver then confirms it.
//!
//! A move to where the stepper already stands (`delta` 0) passes checks 1-3
//! and then ends: nothing is sent, no rest is waited for or started.
//!
//! After a cancel nothing of the operation passes: its moves and counter
//! writes are checked for the cancel under the gate's one-move lock right
//! before they are sent, and [`MotionGate::quiesce`] waits for a move already
//! past that check. [`MotionGate::settle`] lets an operation wait out a
//! stepper's rest before reading its sensor.
//!
//! Setting a counter without motion passes check 1, the existence part of
//! check 2 and check 4 on the value (it is refused to others while an
//! operation runs; a counter outside the stepper's travel is refused like a
//! move there; a disabled stepper's counter may be set, nothing moves, so an
//! operator can vouch for a stepper before enabling it).
//!
//! An operation may also set a *working* counter
//! ([`MotionGate::set_working_counter`]): the same checks as setting a
//! counter, for the operation's own moves only, and the counter stays
//! untrusted (X homing counts from X max while it looks for the switch;
//! nothing may record that count as the carriage's position).
//!
//! Changing the motor parameters (`set_motor`: speed, acceleration, the
//! boards' limits) passes check 1 (refused while an operation runs, to
//! everyone), needs every board connected, is checked whole against the
//! layout and the firmwares (`MotorParams::change`), and is sent to the
//! boards one move-slot at a time like a move.
//!
//! Messages say what is wrong without a "refused" prefix: the control API's
//! error kind (`refused`) says that already.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::board::{BoardError, BoardHandle, LinkState};
use crate::config::{BoardConfig, Layout, MotorParam, MotorParams, MotorTarget, Role};
use crate::snapshot::Settings;

/// Who asks for a move.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// The running operation holding this ticket.
    Operation(u64),
    /// A control API request.
    Manual,
    /// The GUI compatibility socket.
    Compat,
}

/// Why the gate refused (or a move failed).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GateError {
    /// Another operation runs.
    #[error("operation {0} is running (moves are refused until it ends or is cancelled)")]
    OperationRunning(String),
    /// An operation is already running (starting another).
    #[error("operation {0} is already running; one operation at a time")]
    Busy(String),
    /// The operation was cancelled: no further moves.
    #[error("cancelled")]
    Cancelled,
    /// The operation was stopped by something at the machine (a jog of one
    /// of its steppers): its plan no longer holds.
    #[error("stopped: {0}")]
    Interrupted(String),
    /// No such stepper.
    #[error("stepper {stepper} does not exist (the host has {count})")]
    UnknownStepper {
        /// Requested index.
        stepper: usize,
        /// Steppers on the host.
        count: usize,
    },
    /// The stepper is disabled.
    #[error("stepper {0} is disabled")]
    Disabled(usize),
    /// The counter is not known or not trusted.
    #[error("the counter of stepper {stepper} is {why}")]
    Unknown {
        /// The stepper.
        stepper: usize,
        /// What is wrong.
        why: String,
    },
    /// The target is outside the configured limits.
    #[error("stepper {stepper} target {target} is outside its limits {min} to {max}")]
    OutOfLimits {
        /// The stepper.
        stepper: usize,
        /// Requested target.
        target: i64,
        /// Lower limit.
        min: i32,
        /// Upper limit.
        max: i32,
    },
    /// A counter value outside the stepper's configured travel: a counter
    /// that says the mechanism stands where it cannot is refused like a
    /// move there.
    #[error("stepper {stepper} counter {value} is outside its travel {min} to {max}")]
    CounterOutOfLimits {
        /// The stepper.
        stepper: usize,
        /// Requested counter value.
        value: i32,
        /// Lower limit.
        min: i32,
        /// Upper limit.
        max: i32,
    },
    /// An emergency stop (`stringdriverctl stop`) came while this move
    /// waited for its turn or its rest: it is dropped, never sent.
    #[error("dropped by an emergency stop before it was sent")]
    Stopped,
    /// Motor parameters that cannot be used, or cannot be changed now.
    #[error("motor parameters: {0}")]
    Motor(String),
    /// The board failed or refused.
    #[error(transparent)]
    Board(#[from] BoardError),
}

impl GateError {
    /// Whether the gate refused before anything reached a board (as
    /// opposed to a board failing or an operation being cancelled).
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            GateError::Board(_)
                | GateError::Cancelled
                | GateError::Interrupted(_)
                | GateError::Stopped
        )
    }
}

/// Counts a move inside the gate for as long as it is there.
struct Inside<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Inside<'a> {
    fn enter(n: &'a std::sync::atomic::AtomicUsize) -> Inside<'a> {
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Inside(n)
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The running operation.
#[derive(Debug, Clone)]
struct Running {
    ticket: u64,
    kind: String,
    cancel: CancellationToken,
    /// Global indices of the steppers the operation works on.
    steppers: Vec<usize>,
    /// Why it was stopped from the machine, if it was.
    interrupted: Option<String>,
}

struct Inner {
    boards: Vec<BoardHandle>,
    layout: Arc<Layout>,
    settings: watch::Receiver<Settings>,
    /// When each stepper's last move ended.
    last_move: Mutex<Vec<Option<Instant>>>,
    running: Mutex<Option<Running>>,
    next_ticket: Mutex<u64>,
    /// One move at a time through the gate.
    serial: tokio::sync::Mutex<()>,
    /// Bumped by every emergency stop: a move that saw another value when it
    /// entered the gate is dropped before it is sent.
    stops: watch::Sender<u64>,
    /// Moves inside the gate: waiting for their turn or rest, or on their way.
    waiting: std::sync::atomic::AtomicUsize,
    /// The boards' configuration and the motor parameters they were given.
    motor: Mutex<Option<(Vec<BoardConfig>, MotorParams)>>,
}

/// The gate. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct MotionGate {
    inner: Arc<Inner>,
}

/// Held while an operation runs; dropping it ends the operation.
pub struct OperationTicket {
    gate: MotionGate,
    ticket: u64,
    cancel: CancellationToken,
}

impl OperationTicket {
    /// The origin to pass with this operation's moves.
    pub fn origin(&self) -> Origin {
        Origin::Operation(self.ticket)
    }

    /// Fires when the operation is cancelled.
    pub fn cancelled(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Rests `d` (lap_rest and the like), unless cancelled first.
    pub async fn rest(&self, d: Duration) -> Result<(), GateError> {
        tokio::select! {
            _ = self.cancel.cancelled() => Err(self.interrupted().map_or(GateError::Cancelled, GateError::Interrupted)),
            _ = tokio::time::sleep(d) => Ok(()),
        }
    }

    /// `Ok` while the operation may go on; the reason it may not once it was
    /// cancelled or stopped from the machine. Operations ask before every
    /// step that is not a move (a sensor read, a counter write, a nested
    /// operation), so a cancel takes effect at the next step, not only at the
    /// next refused move.
    pub fn check(&self) -> Result<(), GateError> {
        if let Some(why) = self.interrupted() {
            return Err(GateError::Interrupted(why));
        }
        if self.cancel.is_cancelled() {
            return Err(GateError::Cancelled);
        }
        Ok(())
    }

    /// Adds `steppers` (global indices) to those the operation works on: a
    /// jog of one of them at the machine stops it ([`MotionGate::jogged`]).
    pub fn watch_steppers(&self, steppers: &[usize]) {
        self.gate.with_running(self.ticket, |r| {
            for s in steppers {
                if !r.steppers.contains(s) {
                    r.steppers.push(*s);
                }
            }
        });
    }

    /// Why the operation was stopped from the machine, if it was.
    pub fn interrupted(&self) -> Option<String> {
        self.gate
            .with_running(self.ticket, |r| r.interrupted.clone())
            .flatten()
    }
}

impl Drop for OperationTicket {
    fn drop(&mut self) {
        let mut r = self
            .gate
            .inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if r.as_ref().is_some_and(|r| r.ticket == self.ticket) {
            *r = None;
        }
    }
}

impl MotionGate {
    /// A gate over `boards` (in configured order).
    pub fn new(
        boards: Vec<BoardHandle>,
        layout: Arc<Layout>,
        settings: watch::Receiver<Settings>,
    ) -> MotionGate {
        let n = layout.total_steppers();
        MotionGate {
            inner: Arc::new(Inner {
                boards,
                layout,
                settings,
                last_move: Mutex::new(vec![None; n]),
                running: Mutex::new(None),
                next_ticket: Mutex::new(1),
                serial: tokio::sync::Mutex::new(()),
                stops: watch::channel(0).0,
                waiting: std::sync::atomic::AtomicUsize::new(0),
                motor: Mutex::new(None),
            }),
        }
    }

    /// Lets the gate change the motor parameters: the boards' configuration
    /// (firmware, widths) and the parameters the board drivers were started
    /// with. Without it `set_motor` is refused.
    pub fn with_motor(self, boards: Vec<BoardConfig>, params: MotorParams) -> MotionGate {
        *self.inner.motor.lock().unwrap_or_else(|e| e.into_inner()) = Some((boards, params));
        self
    }

    /// The motor parameters in force (given to the boards), if known.
    pub fn motor(&self) -> Option<MotorParams> {
        self.inner
            .motor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, p)| p.clone())
    }

    /// Changes one motor parameter and gives every board whose commands
    /// change its new set (paced by its driver); returns the parameters now
    /// in force. Refused while an operation runs, while a board is not
    /// connected, and when the result would not be valid (an axis group the
    /// machine lacks, a value the firmware cannot take, host limits outside
    /// the board's). A board that fails to take them keeps them as its
    /// parameters: it refuses moves and its driver sends them again.
    pub async fn set_motor(
        &self,
        origin: &Origin,
        target: MotorTarget,
        param: MotorParam,
        value: i64,
    ) -> Result<MotorParams, GateError> {
        self.check_origin(origin)?;
        // On its own task: a caller that goes away (a control client hanging
        // up) must not leave some boards with the new set and the gate with
        // the old one.
        let (gate, origin) = (self.clone(), origin.clone());
        tokio::spawn(async move { gate.set_motor_now(&origin, target, param, value).await })
            .await
            .map_err(|e| GateError::Motor(format!("the change was interrupted: {e}")))?
    }

    async fn set_motor_now(
        &self,
        origin: &Origin,
        target: MotorTarget,
        param: MotorParam,
        value: i64,
    ) -> Result<MotorParams, GateError> {
        let _one = self.inner.serial.lock().await;
        self.check_origin(origin)?;
        let (boards_cfg, current) = self
            .inner
            .motor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| GateError::Motor("not available on this gate".into()))?;
        let layout = &self.inner.layout;
        let next = current
            .change(target, param, value, layout, &boards_cfg)
            .map_err(GateError::Motor)?;
        for b in &self.inner.boards {
            let st = b.status();
            if st.link != LinkState::Connected {
                return Err(GateError::Motor(format!(
                    "board {} is {}: motor parameters are changed only while every board is connected",
                    st.name, st.link
                )));
            }
        }
        let mut first_error = None;
        for (i, board) in self.inner.boards.iter().enumerate() {
            let writes = next.writes(layout, &boards_cfg, i);
            if writes == current.writes(layout, &boards_cfg, i) {
                continue;
            }
            if let Err(e) = board.set_motor(writes).await {
                tracing::error!(board = board.name(), error = %e, "new motor parameters not taken");
                first_error.get_or_insert(e);
            }
        }
        // The drivers hold the new set whatever happened (they retry it).
        if let Some(slot) = self
            .inner
            .motor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            slot.1 = next.clone();
        }
        tracing::info!(%target, param = param.name(), value, ?origin, "motor parameter changed");
        match first_error {
            Some(e) => Err(GateError::Board(e)),
            None => Ok(next),
        }
    }

    /// Starts an operation of `kind`; refused while another runs.
    pub fn begin(&self, kind: &str) -> Result<OperationTicket, GateError> {
        let mut r = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(other) = r.as_ref() {
            return Err(GateError::Busy(other.kind.clone()));
        }
        let ticket = {
            let mut t = self
                .inner
                .next_ticket
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *t += 1;
            *t
        };
        let cancel = CancellationToken::new();
        *r = Some(Running {
            ticket,
            kind: kind.to_string(),
            cancel: cancel.clone(),
            steppers: Vec::new(),
            interrupted: None,
        });
        Ok(OperationTicket {
            gate: self.clone(),
            ticket,
            cancel,
        })
    }

    fn with_running<T>(&self, ticket: u64, f: impl FnOnce(&mut Running) -> T) -> Option<T> {
        let mut r = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
        r.as_mut().filter(|r| r.ticket == ticket).map(f)
    }

    /// A stepper (global index) was jogged at the machine: a running
    /// operation working on it is stopped before its next move, and ends
    /// `failed` with `why`. True if one was stopped.
    pub fn jogged(&self, stepper: usize, why: &str) -> bool {
        let mut r = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
        let Some(run) = r.as_mut().filter(|r| r.steppers.contains(&stepper)) else {
            return false;
        };
        if run.interrupted.is_none() {
            run.interrupted = Some(why.to_string());
            tracing::warn!(stepper, operation = %run.kind, reason = why, "operation stopped: a stepper it works on was jogged at the machine");
        }
        run.cancel.cancel();
        true
    }

    /// Cancels the running operation; false if none runs.
    pub fn cancel(&self) -> bool {
        let r = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
        match r.as_ref() {
            Some(run) => {
                run.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// The emergency stop: cancels the running operation and drops every
    /// move still waiting in the gate (for its turn or its rest), then
    /// waits until the move on its way to a board, if any, has ended (a
    /// firmware move cannot be interrupted). Returns the kind of the
    /// operation it cancelled. Moves that arrive after it pass as usual.
    pub async fn stop(&self) -> Option<String> {
        self.inner.stops.send_modify(|n| *n += 1);
        let cancelled = {
            let r = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
            r.as_ref().map(|run| {
                run.cancel.cancel();
                run.kind.clone()
            })
        };
        // Every move holds this while it is sent and confirmed; the dropped
        // ones give it up at once.
        drop(self.inner.serial.lock().await);
        tracing::warn!(operation = ?cancelled, "emergency stop: operation cancelled, waiting moves dropped");
        cancelled
    }

    /// Moves inside the gate now: waiting for their turn or their rest, or
    /// on their way to a board.
    pub fn waiting_moves(&self) -> usize {
        self.inner.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Returns once no move or counter write that passed the gate is still
    /// under way. After [`MotionGate::cancel`], nothing of the cancelled
    /// operation can reach a board any more from then on: its moves are
    /// checked for the cancel under the same lock, right before they are
    /// sent. (A move in flight is not interrupted: a board cannot stop one.)
    pub async fn quiesce(&self) {
        drop(self.inner.serial.lock().await);
    }

    /// The kind of the running operation, if any.
    pub fn running(&self) -> Option<String> {
        self.inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|r| r.kind.clone())
    }

    /// Waits until `stepper`'s rest since its previous move (z_rest, x_rest
    /// or tune_rest by role) has elapsed, so that the mechanism has settled
    /// before a sensor is read (operations.md: "move, rest, re-read"). Returns
    /// at once for a stepper that has not moved since that long. Cancellable:
    /// a cancelled (or stopped) operation gets its reason back at once.
    pub async fn settle(&self, origin: &Origin, stepper: usize) -> Result<(), GateError> {
        let cancel = self.check_origin(origin)?;
        let Some(until) = self.rest_ends(stepper) else {
            return Ok(());
        };
        match cancel {
            Some(c) => tokio::select! {
                _ = c.cancelled() => {
                    self.check_origin(origin)?;
                    Err(GateError::Cancelled)
                }
                _ = tokio::time::sleep_until(until) => Ok(()),
            },
            None => {
                tokio::time::sleep_until(until).await;
                Ok(())
            }
        }
    }

    /// Marks `stepper`'s counter untrusted (no bytes reach the board): a
    /// counter that is no longer true, such as one z_calibrate set to the
    /// maximum and could not finish calibrating. Allowed to anyone at any
    /// time, a cancelled operation included — it only withdraws a belief;
    /// manual moves are then refused and snapshots pause until the stepper
    /// is calibrated or its counter set.
    pub async fn distrust(&self, stepper: usize) -> Result<(), GateError> {
        let (board, local) = self.locate(stepper)?;
        self.inner.boards[board].distrust(local).await?;
        Ok(())
    }

    /// Whether `stepper`'s counter is trusted now.
    pub fn trusted(&self, stepper: usize) -> bool {
        self.locate(stepper).is_ok_and(|(b, l)| {
            self.inner.boards[b]
                .status()
                .trusted
                .get(l)
                .copied()
                .unwrap_or(false)
        })
    }

    fn check_origin(&self, origin: &Origin) -> Result<Option<CancellationToken>, GateError> {
        let r = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
        match (r.as_ref(), origin) {
            (Some(run), Origin::Operation(t)) if run.ticket == *t => {
                if let Some(why) = &run.interrupted {
                    Err(GateError::Interrupted(why.clone()))
                } else if run.cancel.is_cancelled() {
                    Err(GateError::Cancelled)
                } else {
                    Ok(Some(run.cancel.clone()))
                }
            }
            (Some(run), _) => Err(GateError::OperationRunning(run.kind.clone())),
            // A ticket whose operation has ended moves nothing.
            (None, Origin::Operation(_)) => Err(GateError::Cancelled),
            (None, _) => Ok(None),
        }
    }

    fn locate(&self, stepper: usize) -> Result<(usize, usize), GateError> {
        let count = self.inner.layout.total_steppers();
        self.inner
            .layout
            .locate(stepper)
            .filter(|(b, _)| *b < self.inner.boards.len())
            .ok_or(GateError::UnknownStepper { stepper, count })
    }

    fn check_stepper(&self, stepper: usize) -> Result<(usize, usize), GateError> {
        let located = self.locate(stepper)?;
        if !self
            .inner
            .settings
            .borrow()
            .enabled
            .get(stepper)
            .copied()
            .unwrap_or(false)
        {
            return Err(GateError::Disabled(stepper));
        }
        Ok(located)
    }

    /// The stepper's current counter, if it can be moved from.
    fn current(
        &self,
        board: usize,
        local: usize,
        stepper: usize,
        origin: &Origin,
    ) -> Result<i32, GateError> {
        let status = self.inner.boards[board].status();
        let unknown = |why: String| GateError::Unknown { stepper, why };
        if status.link != LinkState::Connected {
            return Err(unknown(format!(
                "unknown: board {} is {}",
                status.name, status.link
            )));
        }
        let Some(p) = status
            .positions
            .as_ref()
            .and_then(|p| p.get(local).copied())
        else {
            return Err(unknown("not read yet".into()));
        };
        let trusted = status.trusted.get(local).copied().unwrap_or(false);
        if !trusted && !matches!(origin, Origin::Operation(_)) {
            return Err(unknown(
                "untrusted (the board reset, or it was never set): calibrate or set it".into(),
            ));
        }
        Ok(p)
    }

    /// The counter of `stepper` if its board is connected and has read it
    /// (and, with `trusted`, if the counter is trusted): what a move of it
    /// would start from. For an operation's checks before it starts.
    pub fn known_counter(&self, stepper: usize, trusted: bool) -> Result<i32, GateError> {
        let (board, local) = self.locate(stepper)?;
        let origin = if trusted {
            Origin::Manual
        } else {
            Origin::Operation(0)
        };
        self.current(board, local, stepper, &origin)
    }

    /// The rest `stepper` still has to wait before its next move (since its
    /// previous one, whoever made it) and the setting that sets it (`x_rest`,
    /// `z_rest` or `tune_rest`); `None` when nothing is left. What a manual
    /// move will wait at least, for telling the operator.
    pub fn rest_left(&self, stepper: usize) -> Option<(Duration, &'static str)> {
        let left = self
            .rest_ends(stepper)?
            .checked_duration_since(Instant::now())?;
        let setting = match self.inner.layout.role(stepper) {
            Role::X => "x_rest",
            Role::Tuner { .. } => "tune_rest",
            _ => "z_rest",
        };
        (!left.is_zero()).then_some((left, setting))
    }

    /// When `stepper`'s rest since its previous move (whoever made it)
    /// ends; `None` if it has not moved since the daemon started.
    fn rest_ends(&self, stepper: usize) -> Option<Instant> {
        let last = self
            .inner
            .last_move
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(stepper)
            .copied()
            .flatten()?;
        Some(last + self.rest_of(stepper))
    }

    fn rest_of(&self, stepper: usize) -> Duration {
        let s = self.inner.settings.borrow();
        let secs = match self.inner.layout.role(stepper) {
            Role::X => s.operations.x_rest,
            Role::Tuner { .. } => s.operations.tune_rest,
            Role::ZIn { .. } | Role::ZOut { .. } | Role::Unused => s.operations.z_rest,
        };
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// Moves `stepper` (global index) by `delta`.
    pub async fn move_rel(
        &self,
        origin: &Origin,
        stepper: usize,
        delta: i32,
    ) -> Result<Vec<i32>, GateError> {
        self.do_move(origin, stepper, |cur| cur as i64 + delta as i64)
            .await
    }

    /// Moves `stepper` (global index) to `target`.
    pub async fn move_abs(
        &self,
        origin: &Origin,
        stepper: usize,
        target: i32,
    ) -> Result<Vec<i32>, GateError> {
        self.do_move(origin, stepper, |_| target as i64).await
    }

    async fn do_move(
        &self,
        origin: &Origin,
        stepper: usize,
        target_of: impl Fn(i32) -> i64,
    ) -> Result<Vec<i32>, GateError> {
        // Checked before queueing (fail fast) and again once it is our turn:
        // an operation may have started, a stepper been disabled meanwhile.
        self.check_origin(origin)?;
        self.check_stepper(stepper)?;
        let _inside = Inside::enter(&self.inner.waiting);
        let mut stops = self.inner.stops.subscribe();
        stops.mark_unchanged();
        let _one = tokio::select! {
            one = self.inner.serial.lock() => one,
            _ = stops.changed() => return Err(GateError::Stopped),
        };
        if stops.has_changed().unwrap_or(true) {
            return Err(GateError::Stopped);
        }
        let cancel = self.check_origin(origin)?;
        let (board, local) = self.check_stepper(stepper)?;
        let current = self.current(board, local, stepper, origin)?;
        let target = target_of(current);
        if target == current as i64 {
            // Nothing to do: no bytes to the board, no rest to wait or to start.
            return self.inner.boards[board]
                .status()
                .positions
                .ok_or(GateError::Unknown {
                    stepper,
                    why: "not read yet".into(),
                });
        }
        let (min, max) = self.inner.layout.limits(stepper);
        if target < min as i64 || target > max as i64 {
            return Err(GateError::OutOfLimits {
                stepper,
                target,
                min,
                max,
            });
        }
        // The rest since this stepper's previous move, whoever made it.
        if let Some(until) = self.rest_ends(stepper) {
            let cancelled = async {
                match &cancel {
                    Some(c) => c.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancelled => return Err(GateError::Cancelled),
                _ = stops.changed() => return Err(GateError::Stopped),
                _ = tokio::time::sleep_until(until) => {}
            }
        }
        if cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
            return Err(GateError::Cancelled);
        }
        if stops.has_changed().unwrap_or(true) {
            return Err(GateError::Stopped);
        }
        let result = self.inner.boards[board].amove(local, target as i32).await;
        // The rest counts from the end of the move, even a failed one: the
        // motor may have moved.
        if let Some(slot) = self
            .inner
            .last_move
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(stepper)
        {
            *slot = Some(Instant::now());
        }
        let positions = result?;
        tracing::debug!(stepper, target, ?origin, "move done");
        Ok(positions)
    }

    /// Sets a counter without motion (after calibration, or by an operator).
    /// Allowed on a disabled stepper: nothing moves.
    pub async fn set_counter(
        &self,
        origin: &Origin,
        stepper: usize,
        value: i32,
    ) -> Result<Vec<i32>, GateError> {
        let (board, local, _one) = self.counter_turn(origin, stepper, value).await?;
        Ok(self.inner.boards[board].set_stepper(local, value).await?)
    }

    /// The checks of a counter write ([`MotionGate::set_counter`]), then
    /// its turn through the gate: the board and index to write to, and the
    /// gate's one-at-a-time guard, held until the write is done.
    async fn counter_turn(
        &self,
        origin: &Origin,
        stepper: usize,
        value: i32,
    ) -> Result<(usize, usize, tokio::sync::MutexGuard<'_, ()>), GateError> {
        self.check_origin(origin)?;
        let (board, local) = self.locate(stepper)?;
        let (min, max) = self.inner.layout.limits(stepper);
        if value < min || value > max {
            return Err(GateError::CounterOutOfLimits {
                stepper,
                value,
                min,
                max,
            });
        }
        let one = self.inner.serial.lock().await;
        self.check_origin(origin)?;
        Ok((board, local, one))
    }

    /// Sets a counter without motion and leaves it untrusted, for the
    /// running operation only (see the module doc): a value the operation
    /// counts from, not a position anyone vouches for. Checked like
    /// [`MotionGate::set_counter`]; refused to everyone but the operation
    /// holding `origin`'s ticket.
    pub async fn set_working_counter(
        &self,
        origin: &Origin,
        stepper: usize,
        value: i32,
    ) -> Result<Vec<i32>, GateError> {
        if !matches!(origin, Origin::Operation(_)) {
            return Err(GateError::Unknown {
                stepper,
                why: "only set as a working value by a running operation".into(),
            });
        }
        let (board, local, _one) = self.counter_turn(origin, stepper, value).await?;
        Ok(self.inner.boards[board]
            .set_stepper_untrusted(local, value)
            .await?)
    }
}
