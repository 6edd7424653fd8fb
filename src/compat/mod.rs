//! The stepper GUI's socket: the lab's older tools (the operations GUI on a
//! machine without sensors, and scripts written against that socket) move
//! steppers by writing text lines to the socket the stepper GUI served. The
//! daemon serves the same protocol, exactly as `gui-ipc.md` gives it, for one
//! board (the carriage board by default), so those tools keep working while
//! the daemon owns the boards.
//!
//! # Where
//!
//! `<compat.dir>/stepper_gui_<P>.sock`, `<P>` being the board's port as the
//! lab's tools name it (`compat.port`, default the board's configured port)
//! with every `/` replaced by `_`: `/dev/ttyACM0` →
//! `stepper_gui__dev_ttyACM0.sock` ([`crate::config::CompatConfig::socket`]).
//! Served only when `compat.enabled`. In service the directory is
//! `/run/stringdriver` (the unit's RuntimeDirectory: the service's /tmp is
//! private) and the package's tmpfiles.d entry links
//! `/tmp/stepper_gui__dev_ttyACM0.sock` to it. Mode 0660, the daemon's
//! group. A socket file left by a crash (nobody answers on it) is replaced;
//! one a live server answers on, or a file that is not a socket, is left
//! alone and binding is retried.
//!
//! The path is checked every [`CHECK_INTERVAL`]: when the socket file was
//! deleted or replaced (the older tools' exit script deletes
//! `/tmp/stepper_gui_*.sock`), it is bound again (`rebinds` in status).
//! Connections already open are not affected. At shutdown the file is
//! removed if it is still the daemon's.
//!
//! # Protocol
//!
//! Newline-terminated text lines, fields separated by spaces; a client keeps
//! one connection open and writes many lines; empty lines are skipped.
//! Stepper numbers are the served board's own indices.
//!
//! | line | effect | reply |
//! |---|---|---|
//! | `rel_move <i> <d>` | move stepper i by d steps | none |
//! | `abs_move <i> <p>` | move stepper i to p | none |
//! | `reset <i> <p>` | set stepper i's counter to p, no motion (never the firmware's reset-all) | none |
//! | `get_positions` | — | `positions 0=<p0> 1=<p1> ...` |
//! | `get_x_step` | — | the `x_step` setting, a decimal integer |
//! | anything else | logged | none; the connection stays open |
//!
//! Moves and resets pass the motion gate as [`Origin::Compat`] — one
//! operation at a time, enables, trusted counters, limits, rests — exactly
//! as the control socket's. A refusal (or a board failure) has no reply,
//! since the clients never read one: it is logged and counted in
//! `status.compat` (`refused`, `failed`, `last_refusal`).
//!
//! `get_positions` answers from the board's live counters when its link is
//! up and every counter is read and trusted (during a move, the counters
//! the board last reported, as the stepper GUI showed them); otherwise (nothing invented)
//! there is no reply, counted as refused, and the connection's writing side
//! is shut down: the clients use no timeouts, so an unanswered `get_*` must
//! end their read (they read the end of the stream), not hang it. The
//! connection's lines are still all read and handled; a later `get_*` on it
//! is refused. The same happens when a reply cannot be written within 5 s.
//!
//! # Bounds
//!
//! - Lines are handled one at a time per connection, in order; nothing more
//!   is read from a connection while its move waits in the gate (rests, the
//!   move itself). A client writing moves faster than the rests allow fills
//!   the connection's 4 KiB buffer ([`lines::BUFFER`]), then the kernel's
//!   socket buffer, and then its writes block: backpressure, never an
//!   unbounded queue. Lines already written are all handled, in order, even
//!   after the client closed (a script's `socat` writes and closes at once).
//! - A line longer than [`lines::MAX_LINE`] bytes is logged, counted
//!   (`long_lines`) and skipped up to its newline; the connection stays
//!   open, and nothing of the long line is acted on. Bytes after the last
//!   newline when a client closes are an unfinished line: never acted on.
//! - At most [`MAX_CLIENTS`] connections at once; one more is closed at once
//!   (`connections_refused`). No connection is ever closed to make room: a
//!   line the client wrote just before could be lost without it knowing.
//!   Connections have no idle timeout: the GUI's one long-lived connection
//!   is silent between moves.
//! - Log lines about one connection's bad lines are limited (20 a minute
//!   for the whole socket, then a count of those left out); the counters
//!   count every one.

mod client;
pub mod lines;
pub mod request;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::net::UnixListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::config::CompatConfig;
use crate::daemon::Parts;
use crate::motion::Origin;

/// Connections served at once; one more is closed at once.
pub const MAX_CLIENTS: usize = 32;
/// How often the socket file is checked (deleted or replaced: bound again).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Permission bits of the socket.
const MODE: u32 = 0o660;

/// One request that was refused or not understood, for `status.compat`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    /// When.
    pub at: DateTime<Utc>,
    /// The line as received (shortened).
    pub line: String,
    /// What was wrong.
    pub error: String,
}

/// What the socket did, for `status.compat` (a watch channel in [`Parts`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CompatStatus {
    /// Whether `[compat]` is enabled.
    pub enabled: bool,
    /// The socket's path.
    pub socket: Option<PathBuf>,
    /// The board served.
    pub board: Option<String>,
    /// Whether the socket file is bound now.
    pub listening: bool,
    /// Why it is not, when it is not.
    pub not_listening: Option<String>,
    /// Connections open now.
    pub clients: usize,
    /// Requests received (known lines: moves, resets, `get_*`).
    pub requests: u64,
    /// Moves and resets made.
    pub done: u64,
    /// `get_*` answered.
    pub answered: u64,
    /// Requests refused (by the gate, or a `get_positions` that could not
    /// be answered); nothing was sent to the board.
    pub refused: u64,
    /// Moves and resets the board failed (sent, not confirmed).
    pub failed: u64,
    /// Lines that are not a request (logged and ignored), unfinished last
    /// lines included.
    pub unknown: u64,
    /// Lines longer than the limit (skipped).
    pub long_lines: u64,
    /// Connections closed at once because every slot was taken.
    pub connections_refused: u64,
    /// Times the socket file was bound again after it was deleted or
    /// replaced.
    pub rebinds: u64,
    /// The last refused or failed request.
    pub last_refusal: Option<Problem>,
    /// The last line that was not a request.
    pub last_unknown: Option<Problem>,
}

/// A status with nothing served (`[compat]` off).
pub fn disabled_status() -> CompatStatus {
    CompatStatus::default()
}

/// Log lines left for the current minute, shared by one socket's
/// connections, so that a client flooding bad lines cannot flood the
/// journal (the counters still count every one).
struct LogBudget {
    window: tokio::time::Instant,
    left: u32,
    skipped: u64,
}

const LOGS_PER_MINUTE: u32 = 20;

impl LogBudget {
    fn new() -> LogBudget {
        LogBudget {
            window: tokio::time::Instant::now(),
            left: LOGS_PER_MINUTE,
            skipped: 0,
        }
    }

    /// Whether a line may be logged now.
    fn take(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if now.duration_since(self.window) >= Duration::from_secs(60) {
            if self.skipped > 0 {
                tracing::warn!(
                    skipped = self.skipped,
                    "stepper GUI socket: {} more refused or unknown lines in the last minute were not logged (see status.compat)",
                    self.skipped
                );
            }
            self.window = now;
            self.left = LOGS_PER_MINUTE;
            self.skipped = 0;
        }
        if self.left > 0 {
            self.left -= 1;
            true
        } else {
            self.skipped += 1;
            false
        }
    }
}

/// What every connection of the socket shares.
struct Ctx {
    /// The served board's index in `parts.boards`.
    board: usize,
    parts: Parts,
    logs: Mutex<LogBudget>,
}

impl Ctx {
    fn status(&self, f: impl FnOnce(&mut CompatStatus)) {
        self.parts.compat.send_modify(f);
    }

    fn may_log(&self) -> bool {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Starts serving the socket of `cfg` (the caller checked `cfg.enabled`).
/// Never fails: a socket that cannot be bound now is logged, shown in
/// `status.compat.not_listening` and tried again every [`CHECK_INTERVAL`];
/// the daemon goes on without it meanwhile. Stops when `cancel` fires and
/// removes the socket file if it is still the daemon's.
pub fn start(cfg: &CompatConfig, parts: Parts, cancel: CancellationToken) -> JoinHandle<()> {
    let board = parts
        .boards
        .iter()
        .position(|b| b.name() == cfg.board)
        // The configuration checked the name; board 0 is the carriage board.
        .unwrap_or(0);
    let path = cfg.socket();
    parts.compat.send_modify(|s| {
        s.enabled = true;
        s.socket = Some(path.clone());
        s.board = Some(cfg.board.clone());
    });
    let ctx = Arc::new(Ctx {
        board,
        parts,
        logs: Mutex::new(LogBudget::new()),
    });
    tokio::spawn(serve(ctx, path, cancel))
}

/// A bound socket and the identity of its file.
struct Bound {
    listener: UnixListener,
    dev: u64,
    ino: u64,
}

/// Why the socket could not be bound.
#[derive(Debug, thiserror::Error)]
enum BindFailure {
    #[error("{0} is not a socket (a {1}); not touching it")]
    NotASocket(PathBuf, &'static str),
    #[error(transparent)]
    Bind(#[from] crate::files::BindError),
    #[error("{path}: {what}: {error}")]
    Io {
        path: PathBuf,
        what: &'static str,
        error: std::io::Error,
    },
}

fn kind_of(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symbolic link"
    } else if t.is_file() {
        "regular file"
    } else if t.is_fifo() {
        "FIFO"
    } else {
        "device or other file"
    }
}

/// Binds `path` (a stale socket replaced), sets its mode, and notes its
/// inode.
async fn bind(path: &Path) -> Result<Bound, BindFailure> {
    if let Ok(meta) = tokio::fs::symlink_metadata(path).await {
        if !meta.file_type().is_socket() {
            return Err(BindFailure::NotASocket(
                path.to_path_buf(),
                kind_of(meta.file_type()),
            ));
        }
    }
    let listener = crate::files::bind_fresh(path).await?;
    let io = |what: &'static str| {
        move |error| BindFailure::Io {
            path: path.to_path_buf(),
            what,
            error,
        }
    };
    let done = async {
        tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(MODE))
            .await
            .map_err(io("chmod"))?;
        tokio::fs::symlink_metadata(path).await.map_err(io("stat"))
    };
    match done.await {
        Ok(meta) => Ok(Bound {
            listener,
            dev: meta.dev(),
            ino: meta.ino(),
        }),
        Err(e) => {
            crate::files::remove_socket(path);
            Err(e)
        }
    }
}

/// Whether the file at `path` is still the socket `bound` made. An error
/// other than "not found" (a permission problem) is taken as yes: the
/// daemon cannot tell, and binding again would not help.
fn still_ours(path: &Path, bound: &Bound) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(m) => m.dev() == bound.dev && m.ino() == bound.ino,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

async fn serve(ctx: Arc<Ctx>, path: PathBuf, cancel: CancellationToken) {
    let mut bound: Option<Bound> = None;
    // Whether it was ever bound: every bind after the first is a rebind.
    let mut ever_bound = false;
    // The last reason binding failed, so that a standing failure is logged once.
    let mut failing: Option<String> = None;
    let mut clients = JoinSet::new();
    let mut check = tokio::time::interval(CHECK_INTERVAL);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = clients.join_next(), if !clients.is_empty() => {
                ctx.status(|s| s.clients = clients.len());
            }
            _ = check.tick() => {
                if bound.as_ref().is_some_and(|b| still_ours(&path, b)) {
                    continue;
                }
                if bound.take().is_some() {
                    tracing::warn!(socket = %path.display(), "stepper GUI socket: the socket file was deleted or replaced; binding it again");
                }
                match bind(&path).await {
                    Ok(b) => {
                        bound = Some(b);
                        failing = None;
                        let again = std::mem::replace(&mut ever_bound, true);
                        tracing::info!(socket = %path.display(), board = %ctx.parts.boards[ctx.board].name(), "stepper GUI socket listening");
                        ctx.status(|s| {
                            s.listening = true;
                            s.not_listening = None;
                            if again {
                                s.rebinds += 1;
                            }
                        });
                    }
                    Err(e) => {
                        let why = e.to_string();
                        if failing.as_ref() != Some(&why) {
                            tracing::error!(socket = %path.display(), error = %why, "stepper GUI socket not served; trying again every {} s", CHECK_INTERVAL.as_secs());
                        }
                        ctx.status(|s| {
                            s.listening = false;
                            s.not_listening = Some(why.clone());
                        });
                        failing = Some(why);
                    }
                }
            }
            r = accept(&bound) => match r {
                Ok((stream, _)) => {
                    if clients.len() >= MAX_CLIENTS {
                        // Dropping the stream closes it: the client reads the end at once.
                        drop(stream);
                        let log = ctx.may_log();
                        ctx.status(|s| s.connections_refused += 1);
                        if log {
                            tracing::warn!(socket = %path.display(), "stepper GUI socket: {MAX_CLIENTS} connections are open; a new one was closed at once");
                        }
                        continue;
                    }
                    clients.spawn(client::serve(stream, ctx.clone()));
                    ctx.status(|s| s.clients = clients.len());
                }
                Err(e) => {
                    // Out of descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "stepper GUI socket: accept failed");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
    }
    if let Some(b) = bound.take() {
        if still_ours(&path, &b) {
            crate::files::remove_socket(&path);
        }
    }
    clients.shutdown().await;
    ctx.status(|s| {
        s.listening = false;
        s.clients = 0;
    });
}

/// The next connection on the bound socket; never, while none is bound.
async fn accept(
    bound: &Option<Bound>,
) -> std::io::Result<(tokio::net::UnixStream, tokio::net::unix::SocketAddr)> {
    match bound {
        Some(b) => b.listener.accept().await,
        None => std::future::pending().await,
    }
}

/// The origin every request of this socket passes the gate with.
const ORIGIN: Origin = Origin::Compat;
