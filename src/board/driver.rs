//! The task that owns one board's serial port for the life of the daemon.
//!
//! Life of a connection: open the port (which resets an AVR board), wait out
//! the reset window while throwing away bootloader noise, drain until the line
//! is quiet, send a lone `;` to clear the board's parser, read the counters and
//! reconcile them with what was known before (a board that reset has zeros
//! where its motors stood elsewhere), then poll at the configured interval and
//! serve requests one at a time.
//!
//! Rules this module keeps:
//! - one request in flight; nothing is sent before the previous move's
//!   expected end, so nothing queues in the board's 63-byte buffer behind a
//!   blocking move;
//! - every write (move, counter) is confirmed by the next positions reply;
//! - timeouts never reopen the port (that would reset the board): the board
//!   is reported unresponsive and polling goes on; only an I/O failure of the
//!   device (unplug) closes it, and reopening follows a capped backoff;
//! - after any error or timeout a lone `;` clears the board's parser;
//! - a board that stays silent (a move far longer than expected, a runaway)
//!   gets one clearing `;` and one poll at a time, further apart each time
//!   (capped at `busy_probe_max`), and its late answer is taken when it
//!   comes (the answers it still owes to earlier probes are read before
//!   anything else is sent): a board that reads nothing while it moves must
//!   not be fed more than its 63-byte receive buffer holds;
//! - counters that change with no command are judged (`super::judge`): jogs
//!   at the machine stay trusted and are announced, a reset (all zeros, or
//!   silence for about the boot time followed by changes) is restored or
//!   distrusted, and motion after a reset is never trusted;
//! - a restore after a reset is paced (`restore`): never more bytes in
//!   flight than the board's receive buffer holds, each batch confirmed by a
//!   positions reply, the last one verifying every counter;
//! - a stepper whose move is not yet confirmed is in transit
//!   (`BoardStatus::moving`): its counter is not a position;
//! - indices and values are checked before anything is sent: every argument
//!   against its width in the firmware's layout (v1 values are 4-byte
//!   `long`s), every target or counter against what the positions reply can
//!   carry back (`Firmware::counter_width`);
//! - on v1, whose X `rmove` moves twice the delta, every relative move is
//!   sent as the `amove` to the same target, so a confirmed move is
//!   confirmed against what the firmware really did.

mod motor;
mod restore;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::{sleep_until, timeout_at, Instant, MissedTickBehavior};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::error::BoardError;
use super::judge::{judge, Judgement, ResetEvidence};
use super::link::{Connector, Link};
use super::spec::BoardSpec;
use super::status::{BoardEvent, BoardStatus, InTransit, LinkState};
use crate::backoff::Backoff;
use crate::protocol::frame::{DiscardReason, BOARD_RX_BUFFER, EXCERPT_LEN};
use crate::protocol::{CmdCodec, Inbound, Op, Outbound, Reply, Request as Wire};

/// A command for the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Relative move of one stepper.
    Rmove {
        /// Stepper index on this board.
        stepper: usize,
        /// Steps, signed.
        delta: i32,
    },
    /// Absolute move of one stepper.
    Amove {
        /// Stepper index on this board.
        stepper: usize,
        /// Target counter.
        target: i32,
    },
    /// Set one counter without motion (`set_stepper`); trusted once the
    /// next positions reply confirms it.
    SetStepper {
        /// Stepper index on this board.
        stepper: usize,
        /// New counter.
        value: i32,
    },
    /// Set one counter without motion (`set_stepper`) and mark it
    /// untrusted: a working value nobody vouches for (X homing sets the X
    /// counter to X max before it searches for the switch), never recorded
    /// as known.
    SetStepperUntrusted {
        /// Stepper index on this board.
        stepper: usize,
        /// New counter.
        value: i32,
    },
    /// Zero **every** counter (`reset_all`). Only sent when asked for by this name.
    ResetAll,
    /// Mark one counter untrusted (nothing is sent to the board): a counter
    /// the host knows is no longer true, e.g. after a calibration that
    /// failed half-way.
    Distrust {
        /// Stepper index on this board.
        stepper: usize,
    },
    /// Ask for free RAM.
    CheckMemory,
    /// Poll positions now.
    Poll,
    /// New motor parameters: sent now (paced) and after every later
    /// connect or reset.
    SetMotor(Vec<crate::config::MotorWrite>),
}

/// What a successful command yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// Counters read back after the command.
    Positions(Vec<i32>),
    /// Free RAM in bytes.
    FreeMemory(i32),
}

/// A command with the place to put its answer.
pub(super) struct Request {
    pub(super) command: Command,
    pub(super) reply: oneshot::Sender<Result<Response, BoardError>>,
}

/// What the board knew before this driver started (persisted state).
#[derive(Debug, Clone, PartialEq)]
pub struct KnownCounters {
    /// Counters last read from the board.
    pub positions: Vec<i32>,
    /// Whether each was trusted then.
    pub trusted: Vec<bool>,
}

/// The channels that connect a driver to its handle.
pub(super) struct Wiring {
    pub(super) status: watch::Sender<BoardStatus>,
    pub(super) events: broadcast::Sender<BoardEvent>,
    pub(super) requests: mpsc::Receiver<Request>,
    pub(super) shutdown: CancellationToken,
}

/// How an exchange failed.
enum Fail {
    /// The device is gone or the link broke: close and reconnect.
    Link(String),
    /// The board misbehaved (timeout, garbage): keep the port open.
    Device(BoardError),
}

/// How a connection ended.
enum End {
    Shutdown,
    Lost(String),
}

type Io = Framed<Box<dyn Link>, CmdCodec>;

pub(super) struct Driver {
    spec: BoardSpec,
    connector: Arc<dyn Connector>,
    status: watch::Sender<BoardStatus>,
    events: broadcast::Sender<BoardEvent>,
    requests: mpsc::Receiver<Request>,
    shutdown: CancellationToken,
    /// Counters last read (or known from before start).
    known: Option<Vec<i32>>,
    /// No request is sent before this instant (a move is still running).
    busy_until: Instant,
    /// Extra time the next reply may take: a move can outlast its estimate.
    grace: Duration,
    /// Consecutive failed polls.
    missed: u32,
    /// Counters the last write may have changed (not evidence of a reset).
    exempt: Exempt,
    /// Where counters survive a restart.
    store: Option<Arc<dyn super::counters::CounterStore>>,
    /// What was saved last (saves happen only on change).
    saved: Option<KnownCounters>,
    /// When the board last answered a poll.
    last_good: Option<Instant>,
    /// Steppers being jogged at the machine, with their counter before the jog.
    jogs: BTreeMap<usize, i32>,
    /// Delay before the next probe of an unresponsive board (doubles, capped).
    probe_delay: Duration,
    /// When an unresponsive board is probed next.
    next_probe: Instant,
    /// The reading just taken came after about a boot time of silence.
    after_silence: bool,
    /// The board holds `spec.motor` (sent since it last connected or reset).
    motor_sent: bool,
    /// Why the last sending of the motor parameters failed.
    motor_error: Option<String>,
}

/// Which counters a write just sent may have changed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Exempt {
    None,
    One(usize),
    All,
}

impl Driver {
    pub(super) fn new(
        spec: BoardSpec,
        connector: Arc<dyn Connector>,
        wiring: Wiring,
        initial: Option<KnownCounters>,
        store: Option<Arc<dyn super::counters::CounterStore>>,
    ) -> Driver {
        let Wiring {
            status,
            events,
            requests,
            shutdown,
        } = wiring;
        let n = spec.steppers();
        let known = initial
            .as_ref()
            .map(|k| k.positions.clone())
            .filter(|p| p.len() == n);
        if let Some(k) = initial.filter(|k| k.trusted.len() == n && k.positions.len() == n) {
            status.send_modify(|s| s.trusted = k.trusted);
        }
        Driver {
            spec,
            connector,
            status,
            events,
            requests,
            shutdown,
            known,
            busy_until: Instant::now(),
            grace: Duration::ZERO,
            missed: 0,
            exempt: Exempt::None,
            store,
            saved: None,
            last_good: None,
            jogs: BTreeMap::new(),
            probe_delay: Duration::ZERO,
            next_probe: Instant::now(),
            after_silence: false,
            motor_sent: false,
            motor_error: None,
        }
    }

    /// Saves the counters where they survive a restart (if a store is set and
    /// they changed). `moving` is saved as untrusted: its move is about to start.
    async fn persist(&mut self, moving: Option<usize>) -> Result<(), String> {
        let Some(store) = self.store.clone() else {
            return Ok(());
        };
        let Some(positions) = self.known.clone() else {
            return Ok(());
        };
        let mut trusted = self.status.borrow().trusted.clone();
        if let Some(t) = moving.and_then(|s| trusted.get_mut(s)) {
            *t = false;
        }
        let k = KnownCounters { positions, trusted };
        if self.saved.as_ref() == Some(&k) {
            return Ok(());
        }
        store.save(&self.spec.name, &k).await?;
        self.saved = Some(k);
        Ok(())
    }

    /// [`Self::persist`] where a failure only needs reporting.
    async fn persist_or_log(&mut self) {
        if let Err(e) = self.persist(None).await {
            tracing::error!(board = %self.spec.name, error = %e, "cannot save the counters");
            self.note_error(&e);
        }
    }

    fn set_link(&self, link: LinkState) {
        self.status.send_if_modified(|s| {
            if s.link == link {
                return false;
            }
            tracing::info!(board = %self.spec.name, state = %link, "board {}: link {link}", self.spec.name);
            s.link = link;
            true
        });
    }

    fn note_error(&self, e: &str) {
        self.status
            .send_modify(|s| s.last_error = Some(e.to_string()));
    }

    fn emit(&self, e: BoardEvent) {
        // No subscriber is fine: events are a courtesy, status is the truth.
        let _ = self.events.send(e);
    }

    fn not_ready(&self) -> BoardError {
        BoardError::NotReady {
            board: self.spec.name.clone(),
            state: self.status.borrow().link.to_string(),
        }
    }

    pub(super) async fn run(mut self) {
        let mut backoff = Backoff::new(self.spec.reconnect_initial, self.spec.reconnect_max);
        tracing::info!(board = %self.spec.name, port = %self.connector.describe(), "board driver started");
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            let name = self.spec.name.clone();
            let round = crate::supervise::guarded(&name, async {
                match self.connector.open().await {
                    Ok(link) => {
                        backoff.reset();
                        self.status.send_modify(|s| s.connects += 1);
                        match self.connection(link).await {
                            End::Shutdown => None,
                            End::Lost(e) => Some(e),
                        }
                    }
                    Err(e) => Some(format!("cannot open {}: {e}", self.connector.describe())),
                }
            })
            .await;
            let error = match round {
                Ok(None) => break,
                Ok(Some(e)) => e,
                // The port is closed with the round; reopening resets the
                // board and the counters are restored like after an unplug.
                Err(e) => e,
            };
            let delay = backoff.next_delay();
            tracing::warn!(board = %self.spec.name, error = %error, retry_in = ?delay, "board link down");
            self.note_error(&error);
            let was_up = !matches!(
                self.status.borrow().link,
                LinkState::Disconnected { .. } | LinkState::Starting
            );
            self.set_link(LinkState::Disconnected {
                error: error.clone(),
                retry_in: delay,
            });
            if was_up {
                self.emit(BoardEvent::Disconnected {
                    board: self.spec.name.clone(),
                    error,
                });
            }
            if !self.idle(Instant::now() + delay).await {
                break;
            }
        }
        self.set_link(LinkState::Stopped);
        self.requests.close();
        while let Ok(r) = self.requests.try_recv() {
            let _ = r.reply.send(Err(BoardError::Stopped {
                board: self.spec.name.clone(),
            }));
        }
        tracing::info!(board = %self.spec.name, "board driver stopped");
    }

    /// Marks one counter untrusted and saves that; nothing reaches the
    /// board, so this is served in every link state.
    async fn distrust(&mut self, stepper: usize) -> Result<Response, BoardError> {
        self.check_stepper(stepper)?;
        self.status.send_modify(|s| {
            if let Some(t) = s.trusted.get_mut(stepper) {
                *t = false;
            }
        });
        tracing::warn!(board = %self.spec.name, stepper, "counter marked untrusted by the host");
        self.persist_or_log().await;
        Ok(Response::Positions(
            self.status.borrow().positions.clone().unwrap_or_default(),
        ))
    }

    /// The answer to a request that arrives while the board cannot be
    /// talked to: refused, except a [`Command::Distrust`], which needs no
    /// board; new motor parameters are refused but kept all the same, to be
    /// sent at the next connect.
    async fn answer_offline(&mut self, r: Request) {
        let answer = match &r.command {
            Command::Distrust { stepper } => self.distrust(*stepper).await,
            Command::SetMotor(writes) => {
                self.keep_motor(writes);
                Err(self.not_ready())
            }
            _ => Err(self.not_ready()),
        };
        let _ = r.reply.send(answer);
    }

    /// Makes `writes` the motor parameters of later connects (if the board
    /// can take them).
    fn keep_motor(&mut self, writes: &[crate::config::MotorWrite]) {
        if self.check_motor(writes).is_ok() {
            self.spec.motor = writes.to_vec();
            self.motor_sent = false;
        }
    }

    /// Waits until `until`, refusing requests meanwhile. False on shutdown.
    async fn idle(&mut self, until: Instant) -> bool {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                _ = sleep_until(until) => return true,
                r = self.requests.recv() => match r {
                    Some(r) => self.answer_offline(r).await,
                    None => return false,
                },
            }
        }
    }

    async fn connection(&mut self, link: Box<dyn Link>) -> End {
        let mut io = Framed::new(
            link,
            CmdCodec::for_board(self.spec.firmware, self.spec.width),
        );
        self.set_link(LinkState::WaitingForReset);
        if let Err(end) = self.wait_for_reset(&mut io).await {
            return end;
        }
        if let Err(e) = io.send(Outbound::ClearParser).await {
            return End::Lost(format!("write failed: {e}"));
        }
        self.busy_until = Instant::now();
        self.grace = Duration::ZERO;
        self.missed = 0;
        self.jogs.clear();
        // Opening the port resets the board: it has its compiled-in values.
        self.forget_motor();
        self.status.send_modify(|s| {
            s.moving = None;
            s.silent_since = None;
            s.jogging.clear();
        });

        // The first poll decides whether the counters can be believed.
        let first = loop {
            match self.read_positions(&mut io).await {
                Ok(p) => break p,
                Err(Fail::Link(e)) => return End::Lost(e),
                Err(Fail::Device(_)) => {
                    if !self.idle(Instant::now() + self.spec.poll_interval).await {
                        return End::Shutdown;
                    }
                }
            }
        };
        if let Err(e) = self.reconcile(&mut io, first).await {
            return End::Lost(e);
        }
        // Before any request is served: a move now would run at the
        // board's compiled-in speed and limits.
        if let Err(Fail::Link(e)) = self.ensure_motor(&mut io).await {
            return End::Lost(e);
        }
        self.emit(BoardEvent::Connected {
            board: self.spec.name.clone(),
        });

        let mut tick = tokio::time::interval(self.spec.poll_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.reset();
        loop {
            let silent = self.unresponsive();
            let result = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return End::Shutdown,
                r = self.requests.recv() => match r {
                    None => return End::Shutdown,
                    // Nobody waits for it any more (the client that asked
                    // left while it queued behind a move): a command sent
                    // minutes later would surprise whoever stands at the
                    // machine now, so it is dropped unsent.
                    Some(r) if r.reply.is_closed() && r.command != Command::Poll => {
                        tracing::info!(
                            board = %self.spec.name,
                            command = ?r.command,
                            "dropped a queued command whose requester has gone: {:?}",
                            r.command
                        );
                        None
                    }
                    Some(r) => {
                        let (answer, fail) = self.serve(&mut io, r.command).await;
                        let _ = r.reply.send(answer);
                        tick.reset();
                        fail
                    }
                },
                // A silent board is not polled on the tick: see `probe`.
                _ = tick.tick(), if !silent => match self.poll(&mut io).await {
                    // A board still without its parameters (a refused
                    // batch) is given them again.
                    Ok(_) if self.status.borrow().link == LinkState::Connected => {
                        self.ensure_motor(&mut io).await.err()
                    }
                    other => other.err(),
                },
                _ = sleep_until(self.next_probe), if silent => self.probe(&mut io).await.err(),
                // Its answer to the last probe may come late (a long move).
                item = io.next(), if silent => self.late_reply(&mut io, item).await.err(),
            };
            if let Some(Fail::Link(e)) = result {
                return End::Lost(e);
            }
            if silent && !self.unresponsive() {
                if let Err(e) = self.settle(&mut io).await {
                    return End::Lost(e);
                }
            }
        }
    }

    /// A board that answers again after a silence may still owe answers to
    /// earlier probes (each `1;` it held in its buffer gets a reply): read
    /// them until the line is quiet for a reply timeout, so that none is
    /// later taken for the answer to a newer request. Bounded: at most one
    /// reply per probe its 63-byte buffer could hold.
    async fn settle(&mut self, io: &mut Io) -> Result<(), String> {
        for _ in 0..BOARD_RX_BUFFER {
            match timeout_at(Instant::now() + self.spec.reply_timeout, io.next()).await {
                Err(_) => return Ok(()),
                Ok(item) => self.absorb(item)?,
            }
        }
        Ok(())
    }

    fn unresponsive(&self) -> bool {
        matches!(self.status.borrow().link, LinkState::Unresponsive { .. })
    }

    /// One clearing `;` and one poll to a board that stopped answering, then
    /// a longer wait before the next (doubling up to `busy_probe_max`): a
    /// board that moves reads nothing, and every byte sent meanwhile sits in
    /// its 63-byte receive buffer or is lost.
    async fn probe(&mut self, io: &mut Io) -> Result<Vec<i32>, Fail> {
        self.probe_delay = (self.probe_delay * 2)
            .max(self.spec.poll_interval)
            .min(self.spec.busy_probe_max.max(self.spec.poll_interval));
        self.next_probe = Instant::now() + self.probe_delay;
        tracing::debug!(board = %self.spec.name, next_in = ?self.probe_delay, "probing a silent board");
        self.poll(io).await
    }

    /// Something arrived from a silent board between probes: a positions
    /// reply is its (late) answer to the last probe and counts as a poll.
    async fn late_reply(
        &mut self,
        io: &mut Io,
        item: Option<Result<Inbound, crate::protocol::FrameError>>,
    ) -> Result<(), Fail> {
        let id = self.spec.firmware.id(Op::Positions);
        match item {
            Some(Ok(Inbound::Message(r))) if Some(r.id) == id => match self.parse_positions(&r) {
                Ok(p) => {
                    tracing::debug!(board = %self.spec.name, "late positions reply taken");
                    self.accept_positions(&p);
                    self.after_read(io, p).await.map(|_| ())
                }
                Err(e) => {
                    tracing::debug!(board = %self.spec.name, error = %e, "late reply unusable");
                    Ok(())
                }
            },
            other => self.absorb(other).map_err(Fail::Link),
        }
    }

    /// Sleeps through the bootloader, then reads until the line is quiet.
    async fn wait_for_reset(&mut self, io: &mut Io) -> Result<(), End> {
        let until = Instant::now() + self.spec.reset_wait;
        let quiet = self.spec.drain_quiet;
        // Bounded: a board that streams noise forever cannot hold us here.
        let drain_limit = until + quiet * 20 + Duration::from_millis(500);
        let mut quiet_until = until;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(End::Shutdown),
                r = self.requests.recv() => match r {
                    Some(r) => self.answer_offline(r).await,
                    None => return Err(End::Shutdown),
                },
                _ = sleep_until(quiet_until.max(until)) => {
                    if Instant::now() >= until { return Ok(()); }
                }
                item = io.next() => {
                    self.absorb(item).map_err(End::Lost)?;
                    if Instant::now() >= until {
                        quiet_until = (Instant::now() + quiet).min(drain_limit);
                    }
                }
            }
            if Instant::now() >= drain_limit {
                return Ok(());
            }
        }
    }

    /// Accounts for an item nobody asked for (noise, a stale reply).
    fn absorb(
        &self,
        item: Option<Result<Inbound, crate::protocol::FrameError>>,
    ) -> Result<(), String> {
        match item {
            None => Err("the device closed the link".into()),
            Some(Err(e)) => Err(format!("read failed: {e}")),
            Some(Ok(Inbound::Discarded {
                reason,
                len,
                excerpt,
            })) => {
                self.log_noise(reason, len, &excerpt);
                Ok(())
            }
            Some(Ok(Inbound::Message(r))) => {
                tracing::debug!(board = %self.spec.name, id = r.id, "unsolicited message ignored");
                Ok(())
            }
        }
    }

    fn log_noise(&self, reason: DiscardReason, len: usize, excerpt: &[u8]) {
        self.status.send_modify(|s| s.noise_bytes += len as u64);
        tracing::debug!(
            board = %self.spec.name,
            %reason,
            len,
            excerpt = %crate::protocol::frame::escape_for_log(&excerpt[..excerpt.len().min(EXCERPT_LEN)]),
            "discarded bytes from the board"
        );
    }

    /// One request-reply exchange, respecting the end of any running move.
    async fn exchange(
        &mut self,
        io: &mut Io,
        op: Op,
        args: Vec<i32>,
    ) -> Result<Option<Reply>, Fail> {
        let id = self.spec.firmware.id(op).ok_or_else(|| {
            Fail::Device(BoardError::Unsupported {
                board: self.spec.name.clone(),
                firmware: self.spec.firmware,
                op,
            })
        })?;
        // The board reads nothing while it moves: wait for the move to end.
        sleep_until(self.busy_until).await;
        // Whatever arrived unasked (noise, a late reply) is not our answer.
        while let Some(item) = io.next().now_or_never() {
            self.absorb(item).map_err(Fail::Link)?;
        }
        io.send(Outbound::Command(Wire { id, args }))
            .await
            .map_err(|e| match e {
                crate::protocol::FrameError::Io(e) => Fail::Link(format!("write failed: {e}")),
                other => Fail::Device(BoardError::Malformed {
                    board: self.spec.name.clone(),
                    op,
                    detail: other.to_string(),
                }),
            })?;
        if !op.has_reply() {
            return Ok(None);
        }
        // A reply can be late because a move outlasted its estimate; that is
        // a slow board, not a dead one.
        let waited = self.spec.reply_timeout + self.grace;
        self.grace = Duration::ZERO;
        let deadline = Instant::now() + waited;
        loop {
            match timeout_at(deadline, io.next()).await {
                Err(_) => {
                    return Err(Fail::Device(BoardError::Timeout {
                        board: self.spec.name.clone(),
                        op,
                        waited,
                    }))
                }
                Ok(Some(Ok(Inbound::Message(r)))) if r.id == id => return Ok(Some(r)),
                Ok(other) => self.absorb(other).map_err(Fail::Link)?,
            }
        }
    }

    /// After a device failure: clear the board's parser so the next request parses.
    async fn recover(&mut self, io: &mut Io) -> Result<(), Fail> {
        io.send(Outbound::ClearParser)
            .await
            .map_err(|e| Fail::Link(format!("write failed: {e}")))
    }

    /// Reads the counters and accounts for the result in the status; failed
    /// polls are counted and followed by a parser clear.
    async fn read_positions(&mut self, io: &mut Io) -> Result<Vec<i32>, Fail> {
        let result = match self.exchange(io, Op::Positions, vec![]).await {
            Ok(Some(reply)) => self.parse_positions(&reply).map_err(Fail::Device),
            Ok(None) => Err(Fail::Device(BoardError::Malformed {
                board: self.spec.name.clone(),
                op: Op::Positions,
                detail: "no reply".into(),
            })),
            Err(f) => Err(f),
        };
        match result {
            Ok(positions) => {
                self.accept_positions(&positions);
                Ok(positions)
            }
            Err(Fail::Link(e)) => Err(Fail::Link(e)),
            Err(Fail::Device(e)) => {
                self.missed += 1;
                let missed = self.missed;
                // Once silent, one line when it starts and one when it ends
                // (`accept_positions`); every probe is a debug line.
                if missed <= self.spec.max_missed_polls {
                    tracing::warn!(board = %self.spec.name, error = %e, missed, "board {}: poll failed ({missed} missed): {e}", self.spec.name);
                } else {
                    tracing::debug!(board = %self.spec.name, error = %e, missed, "board {}: poll failed ({missed} missed): {e}", self.spec.name);
                }
                self.status.send_modify(|s| {
                    s.polls_failed += 1;
                    s.last_error = Some(e.to_string());
                    s.silent_since.get_or_insert_with(Utc::now);
                });
                if missed >= self.spec.max_missed_polls {
                    if !self.unresponsive() {
                        self.report_silence(missed);
                        self.probe_delay = Duration::ZERO;
                        self.next_probe = Instant::now() + self.spec.poll_interval;
                    }
                    self.set_link(LinkState::Unresponsive { missed });
                }
                self.recover(io).await?;
                Err(Fail::Device(e))
            }
        }
    }

    /// Accounts for a good positions reading (the board answers: any move is over).
    fn accept_positions(&mut self, positions: &[i32]) {
        self.after_silence = self.was_silent();
        self.missed = 0;
        self.last_good = Some(Instant::now());
        let mut ended = None;
        self.status.send_modify(|s| {
            s.positions = Some(positions.to_vec());
            s.last_good_poll = Some(Utc::now());
            s.polls_ok += 1;
            if let Some(since) = s.silent_since.take() {
                ended = Some((since, s.moving.clone()));
            }
            if let Some(m) = s.moving.take() {
                s.last_move = Some(m);
            }
        });
        if let Some((since, moving)) = ended.filter(|_| self.unresponsive()) {
            let silent_for = (Utc::now() - since).to_std().unwrap_or_default();
            match moving {
                Some(m) => tracing::warn!(
                    board = %self.spec.name, stepper = m.stepper, op = %m.op, target = m.target,
                    expected = ?m.expected, ?silent_for,
                    "board answers again after a move far longer than expected"
                ),
                None => tracing::warn!(board = %self.spec.name, ?silent_for, "board answers again"),
            }
        }
    }

    /// The one line that says a board went silent, and with which move.
    fn report_silence(&self, missed: u32) {
        let s = self.status.borrow();
        match &s.moving {
            Some(m) => tracing::warn!(
                board = %self.spec.name, stepper = m.stepper, op = %m.op, target = m.target,
                expected = ?m.expected, missed,
                "board busy far longer than its move should take (a runaway, or limits the configuration does not match): probing it once at a time, backing off"
            ),
            None => tracing::warn!(
                board = %self.spec.name, missed,
                "board unresponsive: probing it once at a time, backing off"
            ),
        }
    }

    /// Whether the board was silent for about its boot time before this
    /// reading: polls failed and the last good one is at least `reset_wait` old.
    fn was_silent(&self) -> bool {
        self.status.borrow().silent_since.is_some()
            && self
                .last_good
                .is_none_or(|t| t.elapsed() >= self.spec.reset_wait)
    }

    /// [`Self::read_positions`] retried up to the missed-poll limit.
    async fn read_retrying(&mut self, io: &mut Io) -> Result<Vec<i32>, Fail> {
        let mut last = None;
        for _ in 0..self.spec.max_missed_polls.max(1) {
            match self.read_positions(io).await {
                Ok(p) => return Ok(p),
                Err(Fail::Link(e)) => return Err(Fail::Link(e)),
                Err(Fail::Device(e)) => last = Some(e),
            }
        }
        Err(Fail::Device(last.unwrap_or_else(|| self.not_ready())))
    }

    /// A poll while connected: reads the counters and catches a board that
    /// reset under us (all zeros where the last known counters were not).
    async fn poll(&mut self, io: &mut Io) -> Result<Vec<i32>, Fail> {
        let positions = self.read_positions(io).await?;
        self.after_read(io, positions).await
    }

    /// Like [`Self::poll`], retried up to the missed-poll limit.
    async fn poll_retrying(&mut self, io: &mut Io) -> Result<Vec<i32>, Fail> {
        let positions = self.read_retrying(io).await?;
        self.after_read(io, positions).await
    }

    async fn after_read(&mut self, io: &mut Io, positions: Vec<i32>) -> Result<Vec<i32>, Fail> {
        let exempt = std::mem::replace(&mut self.exempt, Exempt::None);
        let silent = std::mem::take(&mut self.after_silence);
        let Some(known) = self.known.clone() else {
            self.known = Some(positions.clone());
            self.set_link(LinkState::Connected);
            self.persist_or_log().await;
            return Ok(positions);
        };
        let is_exempt = |i: usize| match exempt {
            Exempt::None => false,
            Exempt::One(s) => s == i,
            Exempt::All => true,
        };
        match judge(&known, &positions, is_exempt, silent) {
            Judgement::Unchanged => self.track_jogs(&known, &positions, &[]),
            Judgement::Jogged(steppers) => self.track_jogs(&known, &positions, &steppers),
            Judgement::Reset {
                evidence,
                zeros,
                moved,
            } => {
                self.reset(io, known, positions, evidence, zeros, moved)
                    .await
                    .map_err(Fail::Link)?;
                // The board forgot its motor parameters with its counters.
                if let Err(Fail::Link(e)) = self.ensure_motor(io).await {
                    return Err(Fail::Link(e));
                }
                return Ok(self.known.clone().unwrap_or_default());
            }
        }
        self.known = Some(positions.clone());
        self.set_link(LinkState::Connected);
        self.persist_or_log().await;
        Ok(positions)
    }

    /// Jogs at the machine: `changed` counters moved with no command while
    /// the board answered. A jog is announced when first seen and when its
    /// counter holds still for a poll; the counter stays trusted (the
    /// firmware counted the steps).
    fn track_jogs(&mut self, known: &[i32], fresh: &[i32], changed: &[usize]) {
        let name = self.spec.name.clone();
        for &s in changed {
            if self.jogs.contains_key(&s) {
                continue;
            }
            let (from, to) = (known[s], fresh[s]);
            self.jogs.insert(s, from);
            tracing::warn!(board = %name, stepper = s, from, to, "stepper {s} jogged at the machine: {from} -> {to} (counter kept as true)");
            self.status.send_modify(|st| st.judgements.jogs += 1);
            self.emit(BoardEvent::Jogged {
                board: name.clone(),
                stepper: s,
                from,
                to,
                ended: false,
            });
        }
        let ended: Vec<(usize, i32)> = self
            .jogs
            .iter()
            .filter(|(s, _)| !changed.contains(s))
            .map(|(s, f)| (*s, *f))
            .collect();
        for (s, _) in &ended {
            self.jogs.remove(s);
        }
        // The status first: whoever reacts to the end of a jog (an event
        // snapshot) must find the stepper no longer in transit.
        let jogging: Vec<usize> = self.jogs.keys().copied().collect();
        self.status.send_if_modified(|st| {
            if st.jogging == jogging {
                return false;
            }
            st.jogging = jogging;
            true
        });
        for (s, from) in ended {
            let to = fresh.get(s).copied().unwrap_or_default();
            tracing::info!(board = %name, stepper = s, from, to, "jog of stepper {s} ended: {from} -> {to}");
            self.emit(BoardEvent::Jogged {
                board: name.clone(),
                stepper: s,
                from,
                to,
                ended: true,
            });
        }
    }

    fn parse_positions(&self, reply: &Reply) -> Result<Vec<i32>, BoardError> {
        let n = self.spec.steppers();
        let malformed = |detail: String| BoardError::Malformed {
            board: self.spec.name.clone(),
            op: Op::Positions,
            detail,
        };
        if reply.args.len() != n {
            return Err(malformed(format!(
                "{} values for {n} steppers",
                reply.args.len()
            )));
        }
        reply.ints(self.spec.width).ok_or_else(|| {
            malformed(format!(
                "a value is not {} bytes long",
                self.spec.width.bytes()
            ))
        })
    }

    /// Compares fresh counters with what was known and restores or distrusts.
    async fn reconcile(&mut self, io: &mut Io, fresh: Vec<i32>) -> Result<(), String> {
        let name = self.spec.name.clone();
        self.after_silence = false;
        let Some(prev) = self.known.clone() else {
            // First contact and nothing persisted: zeros are not knowledge.
            tracing::warn!(board = %name, "no earlier counters known: positions untrusted until calibrated or set");
            self.status
                .send_modify(|s| s.trusted.iter_mut().for_each(|t| *t = false));
            self.known = Some(fresh);
            self.set_link(LinkState::Connected);
            return Ok(());
        };
        // Opening the port resets an AVR board: whatever changed since the
        // counters were last known is judged as after a silence.
        match judge(&prev, &fresh, |_| false, true) {
            Judgement::Reset {
                evidence,
                zeros,
                moved,
            } => self.reset(io, prev, fresh, evidence, zeros, moved).await,
            Judgement::Unchanged | Judgement::Jogged(_) => {
                self.known = Some(fresh);
                self.set_link(LinkState::Connected);
                Ok(())
            }
        }
    }

    /// A board reset: restores (paced) or distrusts the counters that read
    /// 0, distrusts those that moved after it, and says so.
    async fn reset(
        &mut self,
        io: &mut Io,
        prev: Vec<i32>,
        fresh: Vec<i32>,
        evidence: ResetEvidence,
        zeros: Vec<usize>,
        moved: Vec<usize>,
    ) -> Result<(), String> {
        let name = self.spec.name.clone();
        tracing::warn!(board = %name, ?evidence, ?prev, ?fresh, ?moved, "board reset detected");
        self.jogs.clear();
        self.forget_motor();
        self.status.send_modify(|s| {
            s.jogging.clear();
            match evidence {
                ResetEvidence::AllZero => s.judgements.resets_all_zero += 1,
                ResetEvidence::Silence => s.judgements.resets_after_silence += 1,
            }
            s.judgements.moved_after_reset += moved.len() as u64;
            for i in &moved {
                if let Some(t) = s.trusted.get_mut(*i) {
                    *t = false;
                }
            }
        });
        if !moved.is_empty() {
            tracing::error!(board = %name, ?moved, "counters moved after the board reset with no command: untrusted until calibrated or set, never restored");
        }
        let mut restored = false;
        let mut known = fresh.clone();
        if self.spec.restore_counters_after_reset {
            tracing::warn!(board = %name, ?zeros, "writing the last known counters back, paced");
            let writes: Vec<(usize, i32)> = zeros.iter().map(|&i| (i, prev[i])).collect();
            let (check, report) = self.restore_paced(io, &writes).await?;
            tracing::info!(board = %name, counters = report.counters, batches = report.batches,
                max_bytes_in_flight = report.max_bytes_in_flight, took = ?report.took,
                verified = report.verified, "restore finished");
            self.status.send_modify(|s| s.last_restore = Some(report));
            let check = check.unwrap_or_else(|| fresh.clone());
            restored = zeros.iter().all(|&i| check.get(i) == prev.get(i));
            // A restore keeps trust, never grants it: a counter untrusted
            // before the reset is untrusted after it, written back or not.
            self.status.send_modify(|s| {
                for &i in &zeros {
                    if check.get(i) != prev.get(i) {
                        if let Some(t) = s.trusted.get_mut(i) {
                            *t = false;
                        }
                    }
                }
            });
            known = check;
            if !restored {
                tracing::error!(board = %name, "counters could not be restored after a reset: untrusted");
            }
        } else {
            tracing::warn!(board = %name, ?zeros, "counters untrusted until calibration (restore is off)");
            self.status.send_modify(|s| {
                for &i in &zeros {
                    if let Some(t) = s.trusted.get_mut(i) {
                        *t = false;
                    }
                }
            });
        }
        self.known = Some(known);
        self.persist_or_log().await;
        // Counted only now, so that whoever sees the count also sees the outcome.
        self.status.send_modify(|s| s.resets_detected += 1);
        self.set_link(LinkState::Connected);
        self.emit(BoardEvent::ResetDetected {
            board: name,
            previous: prev,
            restored,
            moved,
        });
        Ok(())
    }

    fn check_stepper(&self, stepper: usize) -> Result<(), BoardError> {
        if stepper >= self.spec.steppers() {
            return Err(BoardError::StepperOutOfRange {
                board: self.spec.name.clone(),
                stepper: stepper as i64,
                count: self.spec.steppers(),
            });
        }
        Ok(())
    }

    /// `value` as the value argument of `op`: it must fit that argument's
    /// width in the firmware's layout.
    fn check_arg(&self, op: Op, value: i64) -> Result<i32, BoardError> {
        let width = self.spec.firmware.layout(op, self.spec.width).width(1);
        self.fits(width, value)
    }

    /// `value` as a counter (a move's target, a counter to set): it must fit
    /// the positions reply, or the host could never read it back (a v1
    /// counter beyond ±32767 would read as its low 16 bits).
    fn check_counter(&self, value: i64) -> Result<i32, BoardError> {
        self.fits(self.spec.firmware.counter_width(self.spec.width), value)
    }

    fn fits(&self, width: crate::protocol::IntWidth, value: i64) -> Result<i32, BoardError> {
        i32::try_from(value)
            .ok()
            .filter(|v| width.fits(*v))
            .ok_or(BoardError::ValueOutOfRange {
                board: self.spec.name.clone(),
                value,
                bytes: width.bytes(),
            })
    }

    /// Serves one request; returns its answer and any failure the loop must act on.
    async fn serve(
        &mut self,
        io: &mut Io,
        command: Command,
    ) -> (Result<Response, BoardError>, Option<Fail>) {
        let what = format!("{command:?}");
        match self.serve_inner(io, command).await {
            Ok(r) => (Ok(r), None),
            Err(Fail::Device(e)) => {
                // What the board did wrong belongs in the daemon's log, not
                // only in the answer to whoever asked.
                if e.is_device_fault() {
                    tracing::warn!(board = %self.spec.name, command = %what, error = %e, "board command failed");
                } else {
                    tracing::info!(board = %self.spec.name, command = %what, error = %e, "board command refused");
                }
                (Err(e), None)
            }
            Err(Fail::Link(e)) => (
                Err(BoardError::Link {
                    board: self.spec.name.clone(),
                    detail: e.clone(),
                }),
                Some(Fail::Link(e)),
            ),
        }
    }

    async fn serve_inner(&mut self, io: &mut Io, command: Command) -> Result<Response, Fail> {
        let refuse = Fail::Device;
        // Withdrawing trust needs no board, connected or not: it is the
        // host's belief, kept (and saved) as untrusted across a reconnect.
        let needs_link = !matches!(command, Command::Poll | Command::Distrust { .. });
        if needs_link && self.status.borrow().link != LinkState::Connected {
            if let Command::SetMotor(writes) = &command {
                self.keep_motor(writes);
            }
            return Err(refuse(self.not_ready()));
        }
        // A silent board is probed on its own schedule, never on demand:
        // each probe is bytes into a buffer it may not be reading.
        if command == Command::Poll && self.unresponsive() {
            return Err(refuse(self.not_ready()));
        }
        if matches!(command, Command::Rmove { .. } | Command::Amove { .. }) && !self.motor_sent {
            return Err(refuse(self.motor_not_sent()));
        }
        match command {
            Command::Poll => self.poll_retrying(io).await.map(Response::Positions),
            Command::Distrust { stepper } => self.distrust(stepper).await.map_err(refuse),
            Command::SetMotor(writes) => self.set_motor(io, writes).await.map(Response::Positions),
            Command::CheckMemory => {
                let reply = self.exchange(io, Op::CheckMemory, vec![]).await?;
                let mem = reply
                    .and_then(|r| r.ints(self.spec.width))
                    .and_then(|v| v.first().copied())
                    .ok_or_else(|| {
                        refuse(BoardError::Malformed {
                            board: self.spec.name.clone(),
                            op: Op::CheckMemory,
                            detail: "no free-memory value".into(),
                        })
                    })?;
                self.status.send_modify(|s| s.free_memory = Some(mem));
                Ok(Response::FreeMemory(mem))
            }
            Command::Rmove { stepper, delta } => {
                self.check_stepper(stepper).map_err(refuse)?;
                let current = self.current(stepper)?;
                let target = self
                    .check_counter(current as i64 + delta as i64)
                    .map_err(refuse)?;
                if self.spec.firmware.doubles_x_rmove() {
                    // v1 doubles an X rmove; the amove to the same target is
                    // exact on every stepper, X or not.
                    let arg = self.check_arg(Op::Amove, target as i64).map_err(refuse)?;
                    return self
                        .write_and_confirm(io, Op::Amove, stepper, arg, target, current, false)
                        .await;
                }
                let delta = self.check_arg(Op::Rmove, delta as i64).map_err(refuse)?;
                self.write_and_confirm(io, Op::Rmove, stepper, delta, target, current, false)
                    .await
            }
            Command::Amove { stepper, target } => {
                self.check_stepper(stepper).map_err(refuse)?;
                let current = self.current(stepper)?;
                let target = self.check_counter(target as i64).map_err(refuse)?;
                let arg = self.check_arg(Op::Amove, target as i64).map_err(refuse)?;
                self.write_and_confirm(io, Op::Amove, stepper, arg, target, current, false)
                    .await
            }
            Command::SetStepper { stepper, value } => {
                self.set_stepper(io, stepper, value, true).await
            }
            Command::SetStepperUntrusted { stepper, value } => {
                self.set_stepper(io, stepper, value, false).await
            }
            Command::ResetAll => {
                tracing::warn!(board = %self.spec.name, "reset_all requested by name: zeroing every counter");
                self.exchange(io, Op::ResetAll, vec![]).await?;
                self.exempt = Exempt::All;
                let p = self.poll_retrying(io).await?;
                if let Some(i) = p.iter().position(|v| *v != 0) {
                    return Err(refuse(self.not_confirmed(Op::ResetAll, i, 0, p[i])));
                }
                self.status
                    .send_modify(|s| s.trusted.iter_mut().for_each(|t| *t = true));
                self.persist_or_log().await;
                self.emit(BoardEvent::PositionsChanged {
                    board: self.spec.name.clone(),
                    positions: p.clone(),
                });
                Ok(Response::Positions(p))
            }
        }
    }

    /// `set_stepper`, trusted or not once confirmed.
    async fn set_stepper(
        &mut self,
        io: &mut Io,
        stepper: usize,
        value: i32,
        trust: bool,
    ) -> Result<Response, Fail> {
        let refuse = Fail::Device;
        self.check_stepper(stepper).map_err(refuse)?;
        let value = self.check_counter(value as i64).map_err(refuse)?;
        let value = self
            .check_arg(Op::SetStepper, value as i64)
            .map_err(refuse)?;
        let current = self.current(stepper)?;
        if !trust {
            // Untrusted before the write goes out: no status in between
            // shows the new value as known.
            self.status.send_modify(|s| {
                if let Some(t) = s.trusted.get_mut(stepper) {
                    *t = false;
                }
            });
        }
        self.write_and_confirm(io, Op::SetStepper, stepper, value, value, current, trust)
            .await
    }

    fn current(&self, stepper: usize) -> Result<i32, Fail> {
        self.known
            .as_ref()
            .and_then(|k| k.get(stepper).copied())
            .ok_or_else(|| Fail::Device(self.not_ready()))
    }

    fn not_confirmed(&self, op: Op, stepper: usize, expected: i32, actual: i32) -> BoardError {
        BoardError::NotConfirmed {
            board: self.spec.name.clone(),
            op,
            stepper,
            expected,
            actual,
        }
    }

    /// Sends a move or counter write, waits its expected duration, and checks
    /// the next positions reply shows `target` on `stepper`; a confirmed
    /// counter write leaves the counter trusted as `trust` says.
    // `trust` is the one flag a counter write adds to a move's arguments;
    // a struct for one caller's sake would only rename them.
    #[allow(clippy::too_many_arguments)]
    async fn write_and_confirm(
        &mut self,
        io: &mut Io,
        op: Op,
        stepper: usize,
        arg: i32,
        target: i32,
        current: i32,
        trust: bool,
    ) -> Result<Response, Fail> {
        if matches!(op, Op::Rmove | Op::Amove) {
            self.persist(Some(stepper)).await.map_err(|detail| {
                Fail::Device(BoardError::Persist {
                    board: self.spec.name.clone(),
                    detail,
                })
            })?;
        }
        if matches!(op, Op::Rmove | Op::Amove) {
            let steps = (target as i64 - current as i64).unsigned_abs();
            let expected = self.spec.move_duration(stepper, steps);
            // In transit from now until a positions reply confirms the end.
            self.status.send_modify(|s| {
                s.moving = Some(InTransit {
                    stepper,
                    op: op.to_string(),
                    target,
                    from: current,
                    since: Utc::now(),
                    expected,
                })
            });
        }
        self.exchange(io, op, vec![stepper as i32, arg]).await?;
        // This counter may legitimately change: the confirming poll must not
        // take a write that leaves every counter at 0 for a board reset.
        self.exempt = Exempt::One(stepper);
        if matches!(op, Op::Rmove | Op::Amove) {
            let steps = (target as i64 - current as i64).unsigned_abs();
            let expected = self.spec.move_duration(stepper, steps);
            tracing::debug!(board = %self.spec.name, stepper, %op, arg, ?expected, "move sent");
            self.busy_until = Instant::now() + expected;
            self.grace = expected;
        }
        let p = self.poll_retrying(io).await?;
        let actual = p.get(stepper).copied().unwrap_or_default();
        if actual != target {
            return Err(Fail::Device(
                self.not_confirmed(op, stepper, target, actual),
            ));
        }
        if op == Op::SetStepper {
            self.status.send_modify(|s| {
                if let Some(t) = s.trusted.get_mut(stepper) {
                    *t = trust;
                }
            });
        }
        self.persist_or_log().await;
        self.emit(BoardEvent::PositionsChanged {
            board: self.spec.name.clone(),
            positions: p.clone(),
        });
        Ok(Response::Positions(p))
    }
}
