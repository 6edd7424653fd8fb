//! The board driver: one task per serial port, owning it for the life of the
//! daemon (opening a port resets the board, so nobody else may).
//!
//! [`spawn`] starts the task and returns a [`BoardHandle`], the only way to
//! talk to the board: commands go through a queue and are executed one at a
//! time; the board's state is published on a watch channel
//! ([`BoardStatus`]) and changes as events ([`BoardEvent`]). The driver never
//! touches PostgreSQL or anything else that could make it wait.
//!
//! The driver enforces what the *protocol* demands (stepper indices inside the
//! board, values that fit the int width, one request in flight, rests for the
//! duration of a move). What the *machine* demands (enables, configured
//! limits, rests between moves, one operation at a time) is the motion gate's
//! job, in front of this handle.

mod counters;
mod driver;
mod error;
mod judge;
mod link;
mod spec;
mod status;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::backoff::Backoff;
pub use counters::{CounterFile, CounterStore};
pub use driver::{Command, KnownCounters, Response};
pub use error::BoardError;
pub use link::{Connector, Link, OpenFuture, SerialConnector};
pub use spec::BoardSpec;
pub use status::{
    BoardEvent, BoardStatus, InTransit, Judgements, LinkState, MotorReport, RestoreReport,
};

/// Starts the driver of one board. `initial` is what was known of its
/// counters before (persisted state); `None` means nothing is known and the
/// first counters read are untrusted. The task runs until `shutdown` fires
/// or every handle is dropped.
pub fn spawn(
    spec: BoardSpec,
    connector: Arc<dyn Connector>,
    initial: Option<KnownCounters>,
    shutdown: CancellationToken,
) -> (BoardHandle, JoinHandle<()>) {
    spawn_with_store(spec, connector, initial, None, shutdown)
}

/// [`spawn`], keeping the counters in `store` across restarts (see
/// [`CounterFile`]).
pub fn spawn_with_store(
    spec: BoardSpec,
    connector: Arc<dyn Connector>,
    initial: Option<KnownCounters>,
    store: Option<Arc<dyn CounterStore>>,
    shutdown: CancellationToken,
) -> (BoardHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(16);
    let (status_tx, status_rx) = watch::channel(BoardStatus::new(&spec.name, spec.steppers()));
    let (events, _) = broadcast::channel(64);
    let handle = BoardHandle {
        name: spec.name.clone(),
        steppers: spec.steppers(),
        requests: tx,
        status: status_rx,
        events: events.clone(),
    };
    let wiring = driver::Wiring {
        status: status_tx,
        events,
        requests: rx,
        shutdown,
    };
    let driver = driver::Driver::new(spec, connector, wiring, initial, store);
    (handle, tokio::spawn(driver.run()))
}

/// The way to one board. Cheap to clone.
#[derive(Clone)]
pub struct BoardHandle {
    name: String,
    steppers: usize,
    requests: mpsc::Sender<driver::Request>,
    status: watch::Receiver<BoardStatus>,
    events: broadcast::Sender<BoardEvent>,
}

impl BoardHandle {
    /// Board name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of steppers on the board.
    pub fn steppers(&self) -> usize {
        self.steppers
    }

    /// Runs one command and waits for its answer.
    pub async fn execute(&self, command: Command) -> Result<Response, BoardError> {
        let (reply, rx) = oneshot::channel();
        let stopped = || BoardError::Stopped {
            board: self.name.clone(),
        };
        self.requests
            .send(driver::Request { command, reply })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    async fn positions(&self, command: Command) -> Result<Vec<i32>, BoardError> {
        match self.execute(command).await? {
            Response::Positions(p) => Ok(p),
            Response::FreeMemory(_) => Err(BoardError::Stopped {
                board: self.name.clone(),
            }),
        }
    }

    /// Relative move; returns the counters read back after it.
    pub async fn rmove(&self, stepper: usize, delta: i32) -> Result<Vec<i32>, BoardError> {
        self.positions(Command::Rmove { stepper, delta }).await
    }

    /// Absolute move; returns the counters read back after it.
    pub async fn amove(&self, stepper: usize, target: i32) -> Result<Vec<i32>, BoardError> {
        self.positions(Command::Amove { stepper, target }).await
    }

    /// Sets one counter without motion (`set_stepper`).
    pub async fn set_stepper(&self, stepper: usize, value: i32) -> Result<Vec<i32>, BoardError> {
        self.positions(Command::SetStepper { stepper, value }).await
    }

    /// Marks one counter untrusted; nothing is sent to the board.
    pub async fn distrust(&self, stepper: usize) -> Result<Vec<i32>, BoardError> {
        self.positions(Command::Distrust { stepper }).await
    }

    /// Sets one counter without motion and leaves it untrusted (see
    /// [`Command::SetStepperUntrusted`]).
    pub async fn set_stepper_untrusted(
        &self,
        stepper: usize,
        value: i32,
    ) -> Result<Vec<i32>, BoardError> {
        self.positions(Command::SetStepperUntrusted { stepper, value })
            .await
    }

    /// Zeroes **every** counter of the board. Named so that nobody calls it by mistake.
    pub async fn reset_all_counters(&self) -> Result<Vec<i32>, BoardError> {
        self.positions(Command::ResetAll).await
    }

    /// Gives the board new motor parameters (`set_min`/`set_max`/
    /// `set_speed`/`set_accel`, paced to its receive buffer); they are also
    /// what it is given after every later connect or reset. Returns the
    /// counters read after the last batch.
    pub async fn set_motor(
        &self,
        writes: Vec<crate::config::MotorWrite>,
    ) -> Result<Vec<i32>, BoardError> {
        self.positions(Command::SetMotor(writes)).await
    }

    /// Polls now and returns the counters.
    pub async fn poll(&self) -> Result<Vec<i32>, BoardError> {
        self.positions(Command::Poll).await
    }

    /// Free RAM the board reports.
    pub async fn check_memory(&self) -> Result<i32, BoardError> {
        match self.execute(Command::CheckMemory).await? {
            Response::FreeMemory(m) => Ok(m),
            Response::Positions(_) => Err(BoardError::Stopped {
                board: self.name.clone(),
            }),
        }
    }

    /// The board's current status.
    pub fn status(&self) -> BoardStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status changes.
    pub fn watch(&self) -> watch::Receiver<BoardStatus> {
        self.status.clone()
    }

    /// A receiver of events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<BoardEvent> {
        self.events.subscribe()
    }

    /// Waits until the status satisfies `pred`, or `timeout` passes; returns
    /// the status that satisfied it.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl FnMut(&BoardStatus) -> bool,
    ) -> Option<BoardStatus> {
        let mut rx = self.status.clone();
        let r = tokio::time::timeout(timeout, rx.wait_for(pred)).await;
        match r {
            Ok(Ok(s)) => Some(s.clone()),
            _ => None,
        }
    }
}
