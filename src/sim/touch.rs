//! One simulated board's touch sensors served on a Unix socket, so that a
//! daemon in another process can read them (`sensors.simulator_sockets`).
//!
//! The simulator lives where its pseudo-terminal was made (a test process,
//! `stringdriverd sim-controller`); the daemon that drives it may be a child
//! the test kills with SIGKILL. The sensors are wired to the host, not to
//! the board, so they cannot travel over the board's serial link: this
//! socket plays the wiring.
//!
//! # Wire format
//!
//! Line-oriented ASCII over a stream socket; any number of requests per
//! connection, answered in order:
//!
//! - request `touch\n` (a trailing `\r` is tolerated): reply one line with
//!   one character per local stepper of the board, in local index order,
//!   `1` touching and `0` not, e.g. `0110000000000\n`. A board without
//!   steppers that have readings replies an empty line.
//! - request `switches\n`: reply the carriage's limit switches, two
//!   characters, home then away, `1` pressed and `0` not, e.g. `10\n`; a
//!   board without an X stepper replies an empty line.
//! - any other request: `error unknown request\n`; the connection stays.
//! - a line longer than [`MAX_LINE`] bytes (without its `\n`):
//!   `error line too long\n`, then the server closes the connection.
//! - more than [`MAX_CLIENTS`] connections at once: the new one gets
//!   `error busy\n` and is closed.
//!
//! A connection that sends nothing for [`IDLE_TIMEOUT`] (or takes longer to
//! finish a line) is closed, so a stuck client cannot keep a thread.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::SimError;

/// Longest request line, without its `\n`.
pub const MAX_LINE: usize = 64;
/// Most connections served at once.
pub const MAX_CLIENTS: usize = 8;
/// How long a connection may wait between requests, or take to send one.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a reply may wait for the client to take it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

type Reader = dyn Fn() -> Vec<bool> + Send + Sync;
type SwitchReader = dyn Fn() -> Option<super::XSwitchState> + Send + Sync;

/// What a connection answers from: the touch readings and the X switches.
struct Readers {
    touch: Box<Reader>,
    switches: Box<SwitchReader>,
}

/// A running touch server. Dropping it (or [`TouchServer::stop`]) closes
/// every connection, ends its threads and removes the socket file.
pub struct TouchServer {
    path: PathBuf,
    /// Device and inode of the socket file we bound, so that stopping never
    /// removes a socket another server has since put at the same path.
    identity: Option<(u64, u64)>,
    stop: Arc<AtomicBool>,
    /// Dropped to wake the accept thread out of `poll`.
    wake: Option<UnixStream>,
    thread: Option<JoinHandle<()>>,
}

impl TouchServer {
    /// Serves `reader`'s readings (one per local stepper, as
    /// [`super::SimHandle::touching`] returns them) at `path` from a thread
    /// of its own. A socket file nobody answers on (left by a crash) is
    /// replaced; one a live server answers on is an error, as is any other
    /// failure to bind. The directory is created if needed.
    pub fn spawn(
        path: &Path,
        reader: impl Fn() -> Vec<bool> + Send + Sync + 'static,
    ) -> Result<TouchServer, SimError> {
        TouchServer::spawn_with_switches(path, reader, || None)
    }

    /// [`TouchServer::spawn`], also serving the carriage's limit switches
    /// (`switches`, as [`super::SimHandle::x_switches`] returns them).
    pub fn spawn_with_switches(
        path: &Path,
        reader: impl Fn() -> Vec<bool> + Send + Sync + 'static,
        switches: impl Fn() -> Option<super::XSwitchState> + Send + Sync + 'static,
    ) -> Result<TouchServer, SimError> {
        let listener = bind_fresh(path)?;
        let io = |what: &'static str| {
            move |source| SimError::TouchSocket {
                path: path.to_path_buf(),
                what,
                source,
            }
        };
        // Nonblocking so that a client that gave up between poll and accept
        // cannot block the thread; poll does the waiting.
        listener
            .set_nonblocking(true)
            .map_err(io("make the socket nonblocking"))?;
        let identity = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let (wake, woken) = UnixStream::pair().map_err(io("create the wake-up pair"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = Acceptor {
            listener,
            woken,
            stop: stop.clone(),
            readers: Arc::new(Readers {
                touch: Box::new(reader),
                switches: Box::new(switches),
            }),
            clients: Arc::new(Mutex::new(Vec::new())),
            path: path.to_path_buf(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("touch {}", path.display()))
            .spawn(move || acceptor.run());
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                remove_if_ours(path, identity);
                return Err(SimError::Thread(e));
            }
        };
        Ok(TouchServer {
            path: path.to_path_buf(),
            identity,
            stop,
            wake: Some(wake),
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes every connection, waits for the threads and removes the socket.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // The other end then reads end-of-file, which wakes its poll.
        drop(self.wake.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            remove_if_ours(&self.path, self.identity);
        }
    }
}

impl Drop for TouchServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for TouchServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TouchServer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A connection being served: a handle to close it with, and its thread.
struct Client {
    stream: UnixStream,
    thread: JoinHandle<()>,
}

struct Acceptor {
    listener: UnixListener,
    woken: UnixStream,
    stop: Arc<AtomicBool>,
    readers: Arc<Readers>,
    clients: Arc<Mutex<Vec<Client>>>,
    path: PathBuf,
}

fn lock(clients: &Mutex<Vec<Client>>) -> MutexGuard<'_, Vec<Client>> {
    // A poisoned lock only means a client thread panicked; the list is intact.
    clients.lock().unwrap_or_else(|e| e.into_inner())
}

impl Acceptor {
    fn run(self) {
        while !self.stop.load(Ordering::SeqCst) {
            let mut fds = [
                PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.woken.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(socket = %self.path.display(), error = %e, "touch server: poll failed; no longer serving");
                    break;
                }
            }
            if fds[1].any().unwrap_or(true) {
                break;
            }
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors and the like: the next poll retries,
                    // after a pause so that a lasting failure does not spin.
                    tracing::warn!(socket = %self.path.display(), error = %e, "touch server: accept failed");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        let clients = std::mem::take(&mut *lock(&self.clients));
        for c in &clients {
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
        for c in clients {
            let _ = c.thread.join();
        }
    }

    fn admit(&self, mut stream: UnixStream) {
        // Accepted sockets do not inherit O_NONBLOCK on Linux, but say so
        // rather than rely on it: the client threads use timeouts.
        if stream.set_nonblocking(false).is_err()
            || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
        {
            return;
        }
        let mut clients = lock(&self.clients);
        clients.retain(|c| !c.thread.is_finished());
        if clients.len() >= MAX_CLIENTS {
            let _ = stream.write_all(b"error busy\n");
            return;
        }
        let Ok(handle) = stream.try_clone() else {
            return;
        };
        let readers = self.readers.clone();
        let thread = std::thread::Builder::new()
            .name("touch client".to_string())
            .spawn(move || serve(stream, &readers));
        match thread {
            Ok(thread) => clients.push(Client {
                stream: handle,
                thread,
            }),
            Err(e) => {
                tracing::warn!(socket = %self.path.display(), error = %e, "touch server: cannot start a client thread");
            }
        }
    }
}

/// Answers one connection's requests until it closes, misbehaves, idles
/// out or the server stops (which shuts the socket down under us).
fn serve(mut stream: UnixStream, readers: &Readers) {
    serve_lines(&mut stream, readers);
    // The acceptor keeps a clone of the socket (to shut it down on stop), so
    // dropping ours would not close the connection.
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn serve_lines(stream: &mut UnixStream, readers: &Readers) {
    let mut pending: Vec<u8> = Vec::with_capacity(MAX_LINE + 1);
    let mut chunk = [0u8; 128];
    // Set when a line starts (or the previous one was answered): the whole
    // line must arrive within IDLE_TIMEOUT, however it is dripped.
    let mut deadline = Instant::now() + IDLE_TIMEOUT;
    loop {
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let request = line[..end].strip_suffix(b"\r").unwrap_or(&line[..end]);
            if request.len() > MAX_LINE {
                let _ = stream.write_all(b"error line too long\n");
                return;
            }
            let reply = answer(request, readers);
            if stream.write_all(&reply).is_err() {
                return;
            }
            deadline = Instant::now() + IDLE_TIMEOUT;
        }
        if pending.len() > MAX_LINE + 1 {
            let _ = stream.write_all(b"error line too long\n");
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn answer(request: &[u8], readers: &Readers) -> Vec<u8> {
    let bit = |t: bool| if t { b'1' } else { b'0' };
    let mut reply: Vec<u8> = match request {
        b"touch" => (readers.touch)().into_iter().map(bit).collect(),
        b"switches" => (readers.switches)()
            .map(|s| vec![bit(s.home), bit(s.away)])
            .unwrap_or_default(),
        _ => return b"error unknown request\n".to_vec(),
    };
    reply.push(b'\n');
    reply
}

/// The std twin of [`crate::files::bind_fresh`] (the simulator runs on OS
/// threads, not in the runtime).
fn bind_fresh(path: &Path) -> Result<UnixListener, SimError> {
    let io = |what: &'static str| {
        move |source| SimError::TouchSocket {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    if std::fs::symlink_metadata(path).is_ok() {
        if UnixStream::connect(path).is_ok() {
            return Err(SimError::TouchSocketInUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io("remove the stale socket"))?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io("create its directory"))?;
    }
    UnixListener::bind(path).map_err(io("bind"))
}

fn remove_if_ours(path: &Path, identity: Option<(u64, u64)>) {
    let now = std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()));
    if identity.is_some() && now == identity {
        crate::files::remove_socket(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    fn exchange(conn: &mut BufReader<UnixStream>, request: &[u8]) -> String {
        conn.get_mut().write_all(request).expect("write");
        let mut line = String::new();
        conn.read_line(&mut line).expect("read");
        line
    }

    fn connect(path: &Path) -> BufReader<UnixStream> {
        let s = UnixStream::connect(path).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        BufReader::new(s)
    }

    #[test]
    fn answers_touch_and_refuses_the_rest_on_one_connection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/board.touch");
        let server = TouchServer::spawn(&path, || vec![false, true, true, false]).expect("spawn");
        let mut c = connect(&path);
        assert_eq!(exchange(&mut c, b"touch\n"), "0110\n");
        assert_eq!(exchange(&mut c, b"hello\n"), "error unknown request\n");
        assert_eq!(exchange(&mut c, b"touch\r\n"), "0110\n");
        // Two requests in one write, answered in order.
        c.get_mut().write_all(b"touch\ntouch\n").expect("write");
        let mut two = String::new();
        c.read_line(&mut two).expect("read");
        c.read_line(&mut two).expect("read");
        assert_eq!(two, "0110\n0110\n");
        server.stop();
        assert!(!path.exists(), "the socket is removed");
    }

    #[test]
    fn answers_switches_home_then_away() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.sock");
        let _server = TouchServer::spawn_with_switches(
            &path,
            || vec![false],
            || {
                Some(crate::sim::XSwitchState {
                    home: true,
                    away: false,
                })
            },
        )
        .expect("spawn");
        let mut c = connect(&path);
        assert_eq!(exchange(&mut c, b"switches\n"), "10\n");
        assert_eq!(exchange(&mut c, b"touch\n"), "0\n");
        let plain = dir.path().join("t.sock");
        let _other = TouchServer::spawn(&plain, || vec![true]).expect("spawn");
        let mut c = connect(&plain);
        assert_eq!(
            exchange(&mut c, b"switches\n"),
            "\n",
            "no carriage, no switches"
        );
    }

    #[test]
    fn an_overlong_line_is_refused_and_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.sock");
        let _server = TouchServer::spawn(&path, || vec![true]).expect("spawn");
        let mut c = connect(&path);
        let long = vec![b'x'; MAX_LINE + 10];
        assert_eq!(exchange(&mut c, &long), "error line too long\n");
        let mut rest = String::new();
        assert_eq!(c.read_line(&mut rest).expect("eof"), 0, "closed");
        // Exactly MAX_LINE bytes is a line like any other.
        let mut c = connect(&path);
        let mut max = vec![b'y'; MAX_LINE];
        max.push(b'\n');
        assert_eq!(exchange(&mut c, &max), "error unknown request\n");
    }

    #[test]
    fn clients_beyond_the_limit_are_told_busy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.sock");
        let _server = TouchServer::spawn(&path, || vec![true]).expect("spawn");
        let mut held: Vec<_> = (0..MAX_CLIENTS).map(|_| connect(&path)).collect();
        // Each answers, so each has its thread.
        for c in &mut held {
            assert_eq!(exchange(c, b"touch\n"), "1\n");
        }
        // The refusal is written at accept and the connection closed, so
        // it is read without asking (a request written after the close
        // would fail with EPIPE).
        let mut extra = connect(&path);
        let mut refused = String::new();
        extra.read_line(&mut refused).expect("read");
        assert_eq!(refused, "error busy\n");
        drop(held.pop());
        // The freed slot is reaped at the next accept; the thread may take a
        // moment to notice the close, so retry within a bound.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut c = connect(&path);
            // Refused or served: the request may meet a closed socket, the
            // reply is read either way.
            let _ = c.get_mut().write_all(b"touch\n");
            let mut reply = String::new();
            c.read_line(&mut reply).expect("read");
            if reply == "1\n" {
                break;
            }
            assert_eq!(reply, "error busy\n");
            assert!(Instant::now() < deadline, "the slot is never freed");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_live_socket_is_not_taken_and_a_stale_one_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.sock");
        let server = TouchServer::spawn(&path, Vec::new).expect("spawn");
        let e = TouchServer::spawn(&path, Vec::new).expect_err("in use");
        assert!(matches!(e, SimError::TouchSocketInUse(_)), "{e}");
        assert!(e.to_string().contains("t.sock"), "{e}");
        drop(server);
        // A socket file left behind by a crash: bound, never served.
        let stale = UnixListener::bind(&path).expect("bind");
        drop(stale);
        assert!(path.exists());
        let server = TouchServer::spawn(&path, Vec::new).expect("stale file replaced");
        let mut c = connect(&path);
        assert_eq!(exchange(&mut c, b"touch\n"), "\n");
        drop(server);
        let mut rest = String::new();
        assert_eq!(c.read_line(&mut rest).expect("eof"), 0, "closed on stop");
    }
}
