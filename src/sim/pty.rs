//! The pseudo-terminal side of the simulator: device creation, the link, and
//! the blocking firmware loop.
//!
//! A pseudo-terminal has no baud rate: whatever the host writes is readable
//! at once. The loop therefore stamps every byte with the time it would
//! have taken to arrive over the real line and hands it to the firmware
//! model's receiver ([`Uart`]): the firmware drains the 63-byte ring when
//! its loop comes round, executes what it got message by message, and stays
//! deaf (reading the pty only to stamp arrivals) for each message's busy
//! time. Bytes that arrive while the ring is full are lost and recorded
//! ([`TraceEvent::RxOverflow`], [`super::SimHandle::rx_lost`]).

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::termios::{cfmakeraw, tcflush, tcgetattr, tcsetattr, FlushArg, SetArg};

use super::firmware::{Executed, ParseEvent, Uart, BYTE_TIME};
use super::{
    Control, Fault, SafetyViolation, Shared, SimError, SimOptions, TraceEntry, TraceEvent,
};
use crate::sim::firmware::Outcome;

/// How often the loop looks for hang-ups and injected faults when idle.
const TICK: Duration = Duration::from_millis(2);
/// How long a reply may wait for a host that does not read before it is dropped.
const WRITE_PATIENCE: Duration = Duration::from_secs(1);

/// One pseudo-terminal and the link that points at its slave.
///
/// A real serial tty forgets its exclusive mode (TIOCEXCL, which the host's
/// serial library sets) when its last descriptor closes: the tty is freed
/// and the next open gets a fresh one. A pty's slave lives as long as its
/// master, so a host killed while holding the port (SIGKILL: no TIOCNXCL on
/// the way out) would leave it busy (EBUSY) for every later open. The port
/// therefore keeps a slave descriptor of its own (`keeper`), counts the
/// host's opens and closes of the device itself (`events`), and when the
/// last host descriptor is gone clears exclusive mode and drops what the
/// host left unread, as the real tty's last close does.
pub(super) struct Port {
    master: OwnedFd,
    /// The simulator's own slave descriptor (never counted as a host).
    keeper: OwnedFd,
    device: PathBuf,
    /// Open and close events on the slave device: a host that closes and
    /// reopens the port between two looks still resets the board, as DTR
    /// does; the last close frees the port.
    events: Inotify,
    /// Host descriptors (open file descriptions) of the slave now open.
    clients: usize,
    /// Host opens since the last [`Port::take_opens`].
    opened: usize,
}

impl Port {
    /// Creates a raw-mode pseudo-terminal and links `link` to its slave device.
    pub(super) fn create(link: &Path) -> Result<Port, SimError> {
        let pair = nix::pty::openpty(None, None).map_err(SimError::Pty)?;
        // Raw mode on the slave persists while the master is open, so the
        // bytes the board writes are never echoed or line-buffered, whatever
        // the host does with the device.
        let mut t = tcgetattr(pair.slave.as_fd()).map_err(SimError::Pty)?;
        cfmakeraw(&mut t);
        tcsetattr(pair.slave.as_fd(), SetArg::TCSANOW, &t).map_err(SimError::Pty)?;
        let device = nix::unistd::ttyname(pair.slave.as_fd()).map_err(SimError::Pty)?;
        let flags = fcntl(pair.master.as_fd(), FcntlArg::F_GETFL).map_err(SimError::Pty)?;
        fcntl(
            pair.master.as_fd(),
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )
        .map_err(SimError::Pty)?;
        // Close-on-exec: a child process (the daemon under test, started by
        // the program that runs the simulator) must not inherit the master.
        // A master held open elsewhere keeps the pty alive, so unplugging
        // (dropping our master) would no longer hang the host up.
        fcntl(pair.master.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(SimError::Pty)?;
        // Our own slave descriptor stays (see `Port`), close-on-exec for the
        // same reason as the master; it was opened before the watch below,
        // so it never counts as a host.
        fcntl(pair.slave.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(SimError::Pty)?;
        let link_err = |source| SimError::Link {
            path: link.to_path_buf(),
            source,
        };
        if let Some(dir) = link.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(link_err)?;
        }
        match fs::symlink_metadata(link) {
            Ok(m) if m.file_type().is_symlink() => fs::remove_file(link).map_err(link_err)?,
            Ok(_) => {
                return Err(link_err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a file that is not a symlink is in the way",
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(link_err(e)),
        }
        let events =
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(SimError::Pty)?;
        events
            .add_watch(
                &device,
                AddWatchFlags::IN_OPEN
                    | AddWatchFlags::IN_CLOSE_WRITE
                    | AddWatchFlags::IN_CLOSE_NOWRITE,
            )
            .map_err(SimError::Pty)?;
        std::os::unix::fs::symlink(&device, link).map_err(link_err)?;
        Ok(Port {
            master: pair.master,
            keeper: pair.slave,
            device,
            events,
            clients: 0,
            opened: 0,
        })
    }

    /// Reads the pending open and close events; after the last host
    /// descriptor closed, frees the port as a real tty's last close does.
    fn refresh(&mut self) {
        // One inotify event per open(2) and one per last close of what it
        // opened (dup'ed and inherited descriptors share it), in order.
        // Bounded: the queue holds what happened since the last look.
        let mut closed = false;
        while let Ok(events) = self.events.read_events() {
            if events.is_empty() {
                break;
            }
            for e in &events {
                if e.mask.contains(AddWatchFlags::IN_OPEN) {
                    self.clients += 1;
                    self.opened += 1;
                }
                if e.mask
                    .intersects(AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_CLOSE_NOWRITE)
                {
                    self.clients = self.clients.saturating_sub(1);
                    closed = true;
                }
            }
        }
        if closed && self.clients == 0 {
            self.release();
        }
    }

    /// What the last close of a real tty does: exclusive mode goes (the
    /// next open must not fail with EBUSY) and unread input is dropped.
    fn release(&self) {
        // SAFETY: TIOCNXCL takes no argument; `keeper` is an open slave
        // descriptor owned by this port.
        let rc = unsafe { nix::libc::ioctl(self.keeper.as_raw_fd(), nix::libc::TIOCNXCL) };
        if rc != 0 {
            tracing::warn!(device = %self.device.display(), error = %io::Error::last_os_error(),
                "simulated board: cannot clear exclusive mode on {}", self.device.display());
        }
        let _ = tcflush(self.keeper.as_fd(), FlushArg::TCIFLUSH);
    }

    /// How many times the slave was opened since the last call.
    fn take_opens(&mut self) -> usize {
        std::mem::take(&mut self.opened)
    }

    pub(super) fn device(&self) -> &Path {
        &self.device
    }
}

/// What one look at the master side found.
enum Seen {
    /// Nobody has the slave open.
    Closed,
    /// The slave is open; here is what the host wrote (possibly nothing).
    Data(Vec<u8>),
}

/// The firmware loop.
pub(super) struct Runner {
    opts: SimOptions,
    port: Option<Port>,
    link: PathBuf,
    shared: Arc<Mutex<Shared>>,
    control: mpsc::Receiver<Control>,
    open: bool,
    muted: bool,
    drop_next: bool,
    corrupt_next: bool,
    stop: bool,
    /// Jog switches held at the machine.
    switches: super::jog::Switches,
    /// Model time 0: the receiver's clock is `Instant::now() - epoch`.
    epoch: Instant,
    /// The board's serial receiver (line rate, 63-byte ring).
    uart: Uart,
    /// The firmware's clock (on the receiver's): when it is next free to
    /// look at its receive ring.
    fw_now: Duration,
}

impl Runner {
    pub(super) fn new(
        opts: SimOptions,
        port: Port,
        link: PathBuf,
        shared: Arc<Mutex<Shared>>,
        control: mpsc::Receiver<Control>,
    ) -> Runner {
        let byte_time = opts.scaled(BYTE_TIME);
        Runner {
            epoch: Instant::now(),
            uart: Uart::new(byte_time),
            fw_now: Duration::ZERO,
            opts,
            port: Some(port),
            link,
            shared,
            control,
            open: false,
            muted: false,
            drop_next: false,
            corrupt_next: false,
            stop: false,
            switches: super::jog::Switches::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn trace(&self, event: TraceEvent) {
        self.lock().trace.push(TraceEntry {
            at: Instant::now(),
            event,
        });
    }

    pub(super) fn run(mut self) {
        while !self.stop {
            self.handle_control();
            if self.stop {
                break;
            }
            self.advance_jogs();
            // Wake for the next byte still on the (modelled) line.
            let wait = self
                .uart
                .next_arrival()
                .map_or(TICK, |at| at.saturating_sub(self.model_now()).min(TICK));
            match self.look(wait) {
                None => std::thread::sleep(TICK), // unplugged
                Some(Seen::Closed) => {
                    if self.open {
                        self.open = false;
                        tracing::debug!(link = %self.link.display(), "simulated board: port closed");
                    }
                    std::thread::sleep(TICK);
                }
                Some(Seen::Data(bytes)) => {
                    let reopened = self.port.as_mut().map_or(0, Port::take_opens) > 0;
                    if !self.open || reopened {
                        self.open = true;
                        self.trace(TraceEvent::Opened);
                        tracing::debug!(link = %self.link.display(), "simulated board: port opened, resetting");
                        self.reset_board();
                        continue;
                    }
                    if self.muted {
                        continue;
                    }
                    if !bytes.is_empty() {
                        let now = self.model_now();
                        self.uart.receive(now, &bytes);
                    }
                    self.serve();
                }
            }
        }
        if self.port.take().is_some() {
            let _ = fs::remove_file(&self.link);
        }
    }

    /// Moves the steppers whose jog switches are held (between messages only).
    fn advance_jogs(&mut self) {
        if !self.switches.any() {
            return;
        }
        let scale = self.opts.speed_scale;
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        self.switches.advance(&mut shared.board, scale);
    }

    fn handle_control(&mut self) {
        while let Ok(c) = self.control.try_recv() {
            match c {
                Control::Stop => self.stop = true,
                Control::Fault(f) => self.apply(f),
            }
        }
    }

    fn apply(&mut self, fault: Fault) {
        self.trace(TraceEvent::Fault(fault.clone()));
        match fault {
            Fault::DropNextReply => self.drop_next = true,
            Fault::CorruptNextReply => self.corrupt_next = true,
            Fault::Noise(bytes) => self.write_all(&bytes),
            Fault::Mute(m) => self.muted = m,
            Fault::Vanish => {
                if self.port.take().is_some() {
                    let _ = fs::remove_file(&self.link);
                }
                self.open = false;
                self.lock().device = None;
            }
            Fault::Reappear => {
                if self.port.is_none() {
                    match Port::create(&self.link) {
                        Ok(p) => {
                            self.lock().device = Some(p.device().to_path_buf());
                            self.port = Some(p);
                        }
                        Err(e) => tracing::error!("simulated board cannot reappear: {e}"),
                    }
                }
            }
            Fault::Reset => {
                if self.open {
                    self.reset_board();
                } else {
                    self.lock().board.reset();
                }
            }
            Fault::ResetThenMotion(motion) => {
                if self.open {
                    self.reset_board();
                } else {
                    self.lock().board.reset();
                }
                let mut shared = self.lock();
                for (stepper, steps) in motion {
                    super::jog::step(&mut shared.board, stepper, steps as i64);
                }
            }
            Fault::JogPress {
                stepper,
                toward_max,
            } => self.switches.press(stepper, toward_max),
            Fault::JogRelease { stepper } => {
                // The steps held so far count before the switch lets go.
                self.advance_jogs();
                self.switches.release(stepper);
            }
            // The handle applies sensor faults itself, at once: the sensor is
            // not part of the firmware and does not wait for its loop.
            Fault::SensorStuck { .. } | Fault::XSwitchStuck { .. } => {}
        }
    }

    /// Polls the master (and the device's open/close events) for up to
    /// `wait`. `None` while unplugged.
    fn look(&mut self, wait: Duration) -> Option<Seen> {
        let port = self.port.as_mut()?;
        port.refresh();
        // The host's writes stay readable on the master after its close;
        // they are read (and dropped) below so they never reach a later host.
        let mut fds = [
            PollFd::new(port.master.as_fd(), PollFlags::POLLIN),
            PollFd::new(port.events.as_fd(), PollFlags::POLLIN),
        ];
        let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::ZERO);
        let polled = poll(&mut fds, timeout);
        let readable = fds[0]
            .revents()
            .unwrap_or(PollFlags::empty())
            .contains(PollFlags::POLLIN);
        port.refresh();
        let hosts = port.clients;
        match polled {
            Ok(_) => {}
            Err(Errno::EINTR) => return Some(Seen::Data(Vec::new())).filter(|_| self.open),
            Err(e) => {
                tracing::error!(link = %self.link.display(), error = %e, "simulated board {}: poll failed: {e}", self.link.display());
                return Some(Seen::Closed);
            }
        }
        if hosts == 0 {
            if readable {
                let _ = self.read_available();
            }
            return Some(Seen::Closed);
        }
        if !readable {
            return Some(Seen::Data(Vec::new()));
        }
        Some(self.read_available())
    }

    /// Reads everything the host has written so far, without waiting.
    fn read_available(&mut self) -> Seen {
        let Some(port) = self.port.as_ref() else {
            return Seen::Closed;
        };
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match nix::unistd::read(port.master.as_fd(), &mut buf) {
                Ok(0) => return Seen::Closed,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(Errno::EAGAIN) => return Seen::Data(out),
                Err(Errno::EINTR) => continue,
                // EIO: the last slave descriptor was closed.
                Err(_) => return Seen::Closed,
            }
        }
    }

    fn write_all(&mut self, mut bytes: &[u8]) {
        let deadline = Instant::now() + WRITE_PATIENCE;
        while !bytes.is_empty() {
            let Some(port) = self.port.as_ref() else {
                return;
            };
            match nix::unistd::write(port.master.as_fd(), bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(Errno::EAGAIN) | Err(Errno::EINTR) if Instant::now() < deadline => {
                    std::thread::sleep(TICK)
                }
                Err(_) => return,
            }
        }
    }

    /// Time on the receiver's clock.
    fn model_now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// A power-up: counters to 0, deaf for the reset window, bootloader noise.
    fn reset_board(&mut self) {
        self.lock().board.reset();
        self.uart.clear();
        self.fw_now = self.model_now();
        self.trace(TraceEvent::Reset);
        let window = self.opts.scaled(self.opts.reset_window);
        let deadline = Instant::now() + window;
        let noise_at = Instant::now() + window / 4;
        let mut noise = Some(self.opts.boot_noise.clone()).filter(|n| !n.is_empty());
        let mut lost = 0;
        while Instant::now() < deadline && !self.stop {
            self.handle_control();
            if noise.is_some() && Instant::now() >= noise_at {
                if let Some(n) = noise.take() {
                    self.write_all(&n);
                }
            }
            match self.look(TICK.min(deadline.saturating_duration_since(Instant::now()))) {
                Some(Seen::Data(b)) => lost += b.len(),
                Some(Seen::Closed) | None => {
                    self.open = false;
                    break;
                }
            }
        }
        if let Some(n) = noise.take() {
            self.write_all(&n);
        }
        if lost > 0 {
            self.trace(TraceEvent::LostInBootloader { len: lost });
        }
        if self.open {
            self.trace(TraceEvent::Ready);
        }
    }

    /// The firmware's loop: drain the receive ring, execute what it held,
    /// again until nothing has arrived.
    fn serve(&mut self) {
        // Model time drives the firmware: while idle it jumps to the next
        // byte's arrival, while busy it advances by the busy time, and the
        // thread sleeps until real time catches up. So a simulator thread
        // that runs late never makes the model lose bytes (nor spare them):
        // only the arrival stamps come from real time.
        // Bounded: each round takes bytes that have arrived, and the host's
        // writes are finite; a host writing without pause keeps the board
        // busy exactly as long as the real one.
        while !self.stop {
            let Some(next) = self.uart.next_arrival() else {
                return;
            };
            if next > self.fw_now {
                if next > self.model_now() {
                    return; // still on the line: the main loop waits for it
                }
                self.fw_now = next; // idle until it arrived
            }
            let drained = self.uart.drain(self.fw_now);
            if drained.lost > 0 {
                self.record_loss(drained.lost);
            }
            let handled = drained.bytes.len() + drained.lost;
            for b in drained.bytes {
                let event = self.lock().board.feed(b);
                match event {
                    None => {}
                    Some(ParseEvent::Empty) => self.trace(TraceEvent::EmptyMessage),
                    Some(ParseEvent::DroppedOverlong { len }) => {
                        self.trace(TraceEvent::DroppedOverlong { len });
                    }
                    Some(ParseEvent::Message(done)) => self.finish(done),
                }
            }
            self.lock().rx_handled += handled;
        }
    }

    fn record_loss(&mut self, lost: usize) {
        tracing::warn!(link = %self.link.display(), lost, "simulated board: receive buffer overflow, bytes lost");
        self.lock().rx_lost += lost;
        self.trace(TraceEvent::RxOverflow { lost });
    }

    /// Records an executed message, then plays its busy time and reply.
    fn finish(&mut self, done: Executed) {
        if let Outcome::SafetyViolation(detail) = &done.outcome {
            tracing::error!(
                link = %self.link.display(),
                "SAFETY VIOLATION: the host sent a message that corrupts the real firmware: {detail}"
            );
            self.lock().violations.push(SafetyViolation {
                raw: done.raw.clone(),
                detail: detail.clone(),
            });
        }
        self.trace(TraceEvent::Message {
            raw: done.raw,
            id: done.id,
            op: done.op,
            args: done.args,
            outcome: done.outcome,
        });
        let start = self.epoch + self.fw_now;
        let busy = self.opts.scaled(done.busy);
        if let Some(m) = done.motion {
            self.trace(TraceEvent::Moved {
                stepper: m.stepper,
                steps: m.steps,
                speed: m.speed,
                accel: m.accel,
                took: busy,
            });
        }
        self.fw_now += busy;
        let after = self.opts.scaled(done.reply_after).min(busy);
        let mut reply = done.reply;
        if !reply.is_empty() && self.drop_next {
            self.drop_next = false;
            reply.clear();
        }
        if !reply.is_empty() && self.corrupt_next {
            self.corrupt_next = false;
            corrupt(&mut reply);
        }
        // The first piece after the reply latency, the others spread up to
        // the end of the busy time: the last piece ends it, so what the host
        // sends once it has the whole reply reaches an idle board.
        let gap = (busy - after) / (reply.len().max(2) as u32 - 1);
        for (i, piece) in reply.iter().enumerate() {
            self.busy_until(start + after + gap * i as u32);
            self.write_all(piece);
        }
        self.busy_until(start + busy);
    }

    /// The firmware is busy until `until`: it reads nothing, but bytes the
    /// host writes meanwhile are on the line and reach the receive ring.
    fn busy_until(&mut self, until: Instant) {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.look(left.min(TICK)) {
                Some(Seen::Data(bytes)) if !bytes.is_empty() => {
                    self.trace(TraceEvent::ReceivedWhileBusy { len: bytes.len() });
                    let now = self.model_now();
                    self.uart.receive(now, &bytes);
                }
                Some(Seen::Data(_)) => {}
                // Hung up or unplugged: nothing to read, the firmware still works.
                Some(Seen::Closed) | None => std::thread::sleep(left.min(TICK)),
            }
        }
    }
}

/// Damages a reply the way a noisy line does: a byte in the middle changes
/// and one goes missing, the terminator survives.
fn corrupt(reply: &mut [Vec<u8>]) {
    let mid = reply.len() / 2;
    if let Some(piece) = reply.get_mut(mid) {
        if let Some(b) = piece.first_mut() {
            *b ^= 0x5A;
        }
        if piece.len() > 1 {
            piece.remove(piece.len() - 1);
        }
    }
}
