//! The pseudo-terminal side of the simulator: device creation, the link, and
//! the blocking firmware loop.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};

use super::firmware::{ParseEvent, RX_BUFFER};
use super::{
    Control, Fault, SafetyViolation, Shared, SimError, SimOptions, TraceEntry, TraceEvent,
};
use crate::sim::firmware::Outcome;

/// How often the loop looks for hang-ups and injected faults when idle.
const TICK: Duration = Duration::from_millis(2);
/// How long a reply may wait for a host that does not read before it is dropped.
const WRITE_PATIENCE: Duration = Duration::from_secs(1);

/// One pseudo-terminal and the link that points at its slave.
pub(super) struct Port {
    master: OwnedFd,
    device: PathBuf,
    /// Open events on the slave device: a host that closes and reopens the
    /// port between two looks still resets the board, as DTR does.
    opens: Inotify,
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
        // Our own slave descriptor goes: the board sees "opened" only when a host opens it.
        drop(pair.slave);
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
        let opens =
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(SimError::Pty)?;
        opens
            .add_watch(&device, AddWatchFlags::IN_OPEN)
            .map_err(SimError::Pty)?;
        std::os::unix::fs::symlink(&device, link).map_err(link_err)?;
        Ok(Port {
            master: pair.master,
            device,
            opens,
        })
    }

    /// How many times the slave was opened since the last call.
    fn take_opens(&self) -> usize {
        match self.opens.read_events() {
            Ok(events) => events
                .iter()
                .filter(|e| e.mask.contains(AddWatchFlags::IN_OPEN))
                .count(),
            Err(_) => 0, // EAGAIN: none
        }
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
}

impl Runner {
    pub(super) fn new(
        opts: SimOptions,
        port: Port,
        link: PathBuf,
        shared: Arc<Mutex<Shared>>,
        control: mpsc::Receiver<Control>,
    ) -> Runner {
        Runner {
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
            match self.look(TICK) {
                None => std::thread::sleep(TICK), // unplugged
                Some(Seen::Closed) => {
                    if self.open {
                        self.open = false;
                        tracing::debug!(link = %self.link.display(), "simulated board: port closed");
                    }
                    std::thread::sleep(TICK);
                }
                Some(Seen::Data(bytes)) => {
                    let reopened = self.port.as_ref().map_or(0, Port::take_opens) > 0;
                    if !self.open || reopened {
                        self.open = true;
                        self.trace(TraceEvent::Opened);
                        tracing::debug!(link = %self.link.display(), "simulated board: port opened, resetting");
                        self.reset_board();
                        continue;
                    }
                    if self.muted || bytes.is_empty() {
                        continue;
                    }
                    self.process(bytes);
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
            Fault::SensorStuck { .. } => {}
        }
    }

    /// Polls the master for up to `wait`. `None` while unplugged.
    fn look(&mut self, wait: Duration) -> Option<Seen> {
        let port = self.port.as_ref()?;
        let mut fds = [PollFd::new(port.master.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::ZERO);
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => return Some(Seen::Data(Vec::new())).filter(|_| self.open),
            Err(e) => {
                tracing::error!("simulated board: poll failed: {e}");
                return Some(Seen::Closed);
            }
        }
        let revents = fds[0].revents().unwrap_or(PollFlags::empty());
        if revents.contains(PollFlags::POLLHUP) && !revents.contains(PollFlags::POLLIN) {
            return Some(Seen::Closed);
        }
        if !revents.contains(PollFlags::POLLIN) {
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

    /// A power-up: counters to 0, deaf for the reset window, bootloader noise.
    fn reset_board(&mut self) {
        self.lock().board.reset();
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

    fn process(&mut self, bytes: Vec<u8>) {
        let mut queue: VecDeque<u8> = bytes.into();
        while let Some(b) = queue.pop_front() {
            let event = self.lock().board.feed(b);
            let done = match event {
                None => continue,
                Some(ParseEvent::DroppedOverlong { len }) => {
                    self.trace(TraceEvent::DroppedOverlong { len });
                    continue;
                }
                Some(ParseEvent::Message(done)) => done,
            };
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
            let busy = self.opts.scaled(done.busy);
            let mut reply = done.reply;
            if !reply.is_empty() && self.drop_next {
                self.drop_next = false;
                reply.clear();
            }
            if !reply.is_empty() && self.corrupt_next {
                self.corrupt_next = false;
                corrupt(&mut reply);
            }
            if reply.len() > 1 {
                let gap = busy / (reply.len() as u32 - 1);
                let last = reply.len() - 1;
                for (i, piece) in reply.iter().enumerate() {
                    if i == last {
                        // The busy period ends with the last piece: what the
                        // host sends once it has the whole reply arrives at an
                        // idle board, so the buffer limit is applied before.
                        self.after_busy(&mut queue);
                    }
                    self.write_all(piece);
                    if i < last {
                        std::thread::sleep(gap);
                    }
                }
            } else {
                if let Some(piece) = reply.first() {
                    self.write_all(piece);
                }
                std::thread::sleep(busy);
                if !busy.is_zero() {
                    self.after_busy(&mut queue);
                }
            }
        }
    }

    /// After a blocking period: what arrived meanwhile sat in the 63-byte
    /// receive buffer, and whatever did not fit is gone.
    fn after_busy(&mut self, queue: &mut VecDeque<u8>) {
        let Seen::Data(arrived) = self.read_available() else {
            return;
        };
        if arrived.is_empty() {
            return;
        }
        self.trace(TraceEvent::ReceivedWhileBusy { len: arrived.len() });
        let room = RX_BUFFER.saturating_sub(queue.len());
        let lost = arrived.len().saturating_sub(room);
        queue.extend(arrived.iter().take(room));
        if lost > 0 {
            tracing::warn!(link = %self.link.display(), lost, "simulated board: receive buffer overflow while busy");
            self.trace(TraceEvent::RxOverflow { lost });
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
