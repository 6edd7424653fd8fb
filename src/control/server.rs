//! The listener and one task per client.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;

use super::handlers::{self, Shared};
use super::protocol::{self, ApiError, MAX_LINE};
use crate::config::ControlConfig;
use crate::daemon::Parts;

/// Lines waiting to be written to one client; a client that lets this fill
/// up (it stopped reading) is disconnected instead of holding the daemon.
const CLIENT_QUEUE: usize = 256;
/// How long one write to a client may take before the client is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests one client may make per second.
const RATE_LIMIT: u32 = 100;
/// Clients served at once; more are refused until one leaves. The last
/// slot is kept for root and the daemon's own user, who may also close the
/// client idle the longest to get in: silent clients never lock the
/// operator out.
const MAX_CLIENTS: usize = 64;
/// How often a request that is still waiting checks whether its client is
/// still there.
const HANGUP_CHECK: Duration = Duration::from_millis(100);

/// The clients waiting for their next request, for the idle rules.
#[derive(Default)]
struct Idle {
    next_id: u64,
    /// Since when each waits (`None` while its request is handled), and how
    /// to close it.
    waiting: HashMap<u64, (Option<tokio::time::Instant>, CancellationToken)>,
}

/// One client's entry in [`Idle`]; leaves it when dropped.
struct IdleSlot {
    id: u64,
    idle: Arc<Mutex<Idle>>,
    /// Fired when a privileged newcomer needs this client's slot.
    close: CancellationToken,
    /// How long the client may stay silent (`control.idle_timeout`).
    timeout: Duration,
}

impl Idle {
    fn lock(idle: &Mutex<Idle>) -> std::sync::MutexGuard<'_, Idle> {
        idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn join(idle: &Arc<Mutex<Idle>>, timeout: Duration) -> IdleSlot {
        let close = CancellationToken::new();
        let mut g = Idle::lock(idle);
        let id = g.next_id;
        g.next_id += 1;
        g.waiting.insert(id, (None, close.clone()));
        IdleSlot {
            id,
            idle: idle.clone(),
            close,
            timeout,
        }
    }

    /// Closes the client that has waited the longest; false if none waits.
    fn close_idlest(idle: &Mutex<Idle>) -> bool {
        let g = Idle::lock(idle);
        let idlest = g
            .waiting
            .values()
            .filter_map(|(since, close)| since.map(|s| (s, close)))
            .filter(|(_, close)| !close.is_cancelled())
            .min_by_key(|(since, _)| *since);
        match idlest {
            Some((_, close)) => {
                close.cancel();
                true
            }
            None => false,
        }
    }
}

impl IdleSlot {
    /// Waiting for the next request from now on (`false`: handling one).
    fn waiting(&self, yes: bool) {
        if let Some(e) = Idle::lock(&self.idle).waiting.get_mut(&self.id) {
            e.0 = yes.then(tokio::time::Instant::now);
        }
    }

    /// Subscribed to events: never closed for idleness.
    fn subscribed(&self) {
        Idle::lock(&self.idle).waiting.remove(&self.id);
    }
}

impl Drop for IdleSlot {
    fn drop(&mut self) {
        Idle::lock(&self.idle).waiting.remove(&self.id);
    }
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another daemon answers on the socket.
    #[error("another stringdriverd already answers on {0}; not starting the control socket")]
    InUse(PathBuf),
    /// The socket could not be created or prepared.
    #[error("control socket {path}: {what}: {error}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// The error.
        error: std::io::Error,
    },
}

/// Who may talk to the daemon: root, the daemon's own user and the
/// configured group.
#[derive(Debug, Clone, Copy)]
struct Access {
    own_uid: u32,
    gid: Option<u32>,
}

impl Access {
    /// Root or the daemon's own user: may use the last slot.
    fn privileged(&self, cred: &tokio::net::unix::UCred) -> bool {
        cred.uid() == 0 || cred.uid() == self.own_uid
    }

    /// `groups`: the peer's supplementary groups (`SO_PEERGROUPS`).
    fn allows(&self, cred: &tokio::net::unix::UCred, groups: &[u32]) -> bool {
        let uid = cred.uid();
        if uid == 0 || uid == self.own_uid {
            return true;
        }
        let Some(gid) = self.gid else {
            return false;
        };
        cred.gid() == gid || groups.contains(&gid)
    }
}

/// Prepares the socket (stale file removed, mode and group set) and spawns
/// the server; it stops when `cancel` fires and removes its socket file.
pub async fn start(
    cfg: &ControlConfig,
    parts: Parts,
    cancel: CancellationToken,
) -> Result<JoinHandle<()>, ControlError> {
    let path = cfg.socket.clone();
    let io = |what: &'static str| {
        let path = path.clone();
        move |error| ControlError::Io { path, what, error }
    };
    let listener = crate::files::bind_fresh(&path).await.map_err(|e| match e {
        crate::files::BindError::InUse(p) => ControlError::InUse(p),
        crate::files::BindError::Io { path, what, error } => ControlError::Io { path, what, error },
    })?;
    let gid = match &cfg.group {
        // The socket is born with the daemon's group (the unit's Group=, the
        // documented default): its members are the group that may use it,
        // as the file's mode already says. Refusing them made an unset
        // control.group lock out every operator under the unit.
        None => Some(nix::unistd::getegid().as_raw()),
        Some(name) => match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => {
                // Under the unit the socket is born with the service's group
                // and chown is filtered out: change only what needs changing.
                let current = std::fs::metadata(&path).map(|m| m.gid()).ok();
                if current != Some(g.gid.as_raw()) {
                    if let Err(e) = nix::unistd::chown(&path, None, Some(g.gid)) {
                        tracing::warn!(group = %name, error = %e, "cannot give the control socket to its group {name}: {e}");
                    }
                }
                Some(g.gid.as_raw())
            }
            Ok(None) => {
                tracing::error!(group = %name, "control.group does not exist: only root and the daemon's user may use the control socket");
                None
            }
            Err(e) => {
                tracing::error!(group = %name, error = %e, "cannot look up control.group: only root and the daemon's user may use the control socket");
                None
            }
        },
    };
    tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(cfg.mode))
        .await
        .map_err(io("chmod"))?;
    let access = Access {
        own_uid: nix::unistd::geteuid().as_raw(),
        gid,
    };
    tracing::info!(socket = %path.display(), mode = format!("{:o}", cfg.mode), "control socket listening");
    let shared = Arc::new(Shared::new(parts));
    let idle_timeout = cfg.idle_timeout;
    Ok(tokio::spawn(serve(
        listener,
        path,
        access,
        shared,
        idle_timeout,
        cancel,
    )))
}

async fn serve(
    listener: UnixListener,
    path: PathBuf,
    access: Access,
    shared: Arc<Shared>,
    idle_timeout: Duration,
    cancel: CancellationToken,
) {
    let mut clients = JoinSet::new();
    let idle = Arc::new(Mutex::new(Idle::default()));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let privileged = stream.peer_cred().is_ok_and(|c| access.privileged(&c));
                    let room = if privileged { MAX_CLIENTS } else { MAX_CLIENTS - 1 };
                    let full = clients.len() >= room;
                    if full && privileged && Idle::close_idlest(&idle) {
                        tracing::warn!("control socket: all slots taken; closed the client idle the longest for root or the daemon's user");
                    } else if full {
                        tracing::warn!("control socket: too many clients, refusing one");
                        let mut s = stream;
                        let line = protocol::reply(&Value::Null, Err(ApiError::new("too_many_clients", format!("at most {MAX_CLIENTS} clients at once, the last slot kept for root and the daemon's user"))));
                        let _ = tokio::time::timeout(WRITE_TIMEOUT, s.write_all(format!("{line}\n").as_bytes())).await;
                        continue;
                    }
                    let slot = Idle::join(&idle, idle_timeout);
                    clients.spawn(client(stream, access, shared.clone(), slot, cancel.child_token()));
                }
                Err(e) => {
                    // Out of descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "control socket: accept failed");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
    }
    drop(listener);
    crate::files::remove_socket(&path);
    // An operation started here must not outlive the daemon's boards.
    shared.parts.gate.cancel();
    let op = shared
        .op_task
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(op) = op {
        let _ = tokio::time::timeout(Duration::from_secs(2), op).await;
    }
    clients.shutdown().await;
}

/// Queues a line for the client; false (and the client is dropped) when its
/// queue is full or gone.
fn push(out: &mpsc::Sender<String>, line: String, cancel: &CancellationToken) -> bool {
    if out.try_send(line).is_err() {
        cancel.cancel();
        return false;
    }
    true
}

async fn writer(
    mut half: tokio::net::unix::OwnedWriteHalf,
    mut rx: mpsc::Receiver<String>,
    cancel: CancellationToken,
) {
    while let Some(mut line) = rx.recv().await {
        line.push('\n');
        let written = tokio::select! {
            // Dropped (fell behind, or the daemon stops): nothing more to say.
            _ = cancel.cancelled() => return,
            w = tokio::time::timeout(WRITE_TIMEOUT, half.write_all(line.as_bytes())) => w,
        };
        if !matches!(written, Ok(Ok(()))) {
            cancel.cancel();
            return;
        }
    }
    let _ = half.shutdown().await;
}

/// Requests counted in fixed one-second windows.
struct RateLimit {
    window: tokio::time::Instant,
    count: u32,
}

impl RateLimit {
    fn allow(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.count = 0;
        }
        self.count += 1;
        self.count <= RATE_LIMIT
    }
}

async fn client(
    stream: UnixStream,
    access: Access,
    shared: Arc<Shared>,
    slot: IdleSlot,
    cancel: CancellationToken,
) {
    let cred = stream.peer_cred();
    let groups = super::peer::peer_groups(stream.as_fd());
    let (read, write) = stream.into_split();
    let (out, rx) = mpsc::channel::<String>(CLIENT_QUEUE);
    let writer = tokio::spawn(writer(write, rx, cancel.clone()));
    let allowed = match &cred {
        Ok(c) => access.allows(c, groups.as_deref().unwrap_or_default()),
        Err(_) => false,
    };
    if !allowed {
        if let Err(e) = &groups {
            tracing::warn!(error = %e, "control socket: cannot read the peer's groups ({e})");
        }
        let who = match &cred {
            Ok(c) => format!("uid {} gid {}", c.uid(), c.gid()),
            Err(e) => format!("unknown peer ({e})"),
        };
        tracing::warn!(peer = ?cred.ok(), "control socket: refused a client without permission: {who}");
        let _ = push(
            &out,
            protocol::reply(
                &Value::Null,
                Err(ApiError::new(
                    "forbidden",
                    "only root, the daemon's user and members of control.group may use this socket",
                )),
            ),
            &cancel,
        );
    } else {
        serve_client(read, &out, &shared, &slot, &cancel).await;
    }
    drop(slot);
    drop(out);
    // Lets the last reply (line_too_long, forbidden) reach the client.
    let _ = tokio::time::timeout(WRITE_TIMEOUT, writer).await;
}

/// Closes `out`'s client with an `idle_timeout` reply saying why.
fn close_idle(out: &mpsc::Sender<String>, why: String, cancel: &CancellationToken) {
    let e = ApiError::new("idle_timeout", why);
    let _ = push(out, protocol::reply(&Value::Null, Err(e)), cancel);
}

async fn serve_client(
    read: tokio::net::unix::OwnedReadHalf,
    out: &mpsc::Sender<String>,
    shared: &Arc<Shared>,
    slot: &IdleSlot,
    cancel: &CancellationToken,
) {
    let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(MAX_LINE));
    let mut rate = RateLimit {
        window: tokio::time::Instant::now(),
        count: 0,
    };
    loop {
        slot.waiting(true);
        let next = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = slot.close.cancelled() => {
                let why = "closed to make room for root or the daemon's user (all slots were taken; this client was idle the longest)";
                close_idle(out, why.to_string(), cancel);
                return;
            }
            _ = tokio::time::sleep(slot.timeout) => {
                let why = format!("closed after {} without a request (control.idle_timeout)", humantime::format_duration(slot.timeout));
                close_idle(out, why, cancel);
                return;
            }
            n = lines.next() => n,
        };
        slot.waiting(false);
        let line = match next {
            None => return,
            Some(Ok(l)) => l,
            Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                let _ = push(
                    out,
                    protocol::reply(
                        &Value::Null,
                        Err(ApiError::new(
                            "line_too_long",
                            format!("a request line may hold at most {MAX_LINE} bytes; closing"),
                        )),
                    ),
                    cancel,
                );
                return;
            }
            Some(Err(LinesCodecError::Io(e))) => {
                // Invalid UTF-8 also lands here; the framing is lost, so close.
                let _ = push(
                    out,
                    protocol::reply(&Value::Null, Err(ApiError::new("bad_json", e.to_string()))),
                    cancel,
                );
                return;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let req = match protocol::parse(&line) {
            Ok(r) => r,
            Err((id, e)) => {
                if !push(out, protocol::reply(&id, Err(e)), cancel) {
                    return;
                }
                continue;
            }
        };
        if !rate.allow() {
            let e = ApiError::new(
                "rate_limited",
                format!("at most {RATE_LIMIT} requests per second per client"),
            );
            if !push(out, protocol::reply(&req.id, Err(e)), cancel) {
                return;
            }
            continue;
        }
        if req.cmd == "events" {
            slot.subscribed();
            // Subscribed before the reply: a client that starts an operation
            // once it has the reply cannot miss that operation's events.
            let operations = shared.op_events.subscribe();
            let ok = protocol::reply(&req.id, Ok(json!({"events": true})));
            if push(out, ok, cancel) {
                stream_events(lines, out, shared, cancel, operations).await;
            }
            return;
        }
        if let Some(note) = handlers::announce(shared, &req) {
            if !push(out, protocol::interim(&req.id, note), cancel) {
                return;
            }
        }
        let result = {
            let work = handlers::handle(shared, &req);
            tokio::pin!(work);
            let mut check = tokio::time::interval(HANGUP_CHECK);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = &mut work => break r,
                    _ = check.tick() => {
                        if peer_hung_up(lines.get_ref().as_ref()) {
                            // A move still waiting (behind a rest, another
                            // move or a busy board) is dropped with the
                            // future: sent minutes later it would surprise
                            // whoever stands at the machine now.
                            tracing::info!(
                                cmd = %req.cmd,
                                "control client left before its reply: its {} request is dropped",
                                req.cmd
                            );
                            shared
                                .dropped
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            return;
                        }
                    }
                }
            }
        };
        if !push(out, protocol::reply(&req.id, result), cancel) {
            return;
        }
    }
}

/// Whether the peer closed its end completely (POLLHUP, reported whatever
/// events are asked for). A client that only
/// shut down its writing side (`socat`, a script's half-close) still waits
/// for its reply, so end-of-input alone is not "gone".
fn peer_hung_up(stream: &UnixStream) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::empty())];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) if n > 0 => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
        _ => false,
    }
}

fn obj(pairs: Vec<(&str, Value)>) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The connection as a stream of events until the client leaves or falls behind.
async fn stream_events(
    mut lines: FramedRead<tokio::net::unix::OwnedReadHalf, LinesCodec>,
    out: &mpsc::Sender<String>,
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
    operations: tokio::sync::broadcast::Receiver<String>,
) {
    let mut forwarders = JoinSet::new();
    {
        let mut rx = shared.parts.snapshots.watch();
        let (out, cancel) = (out.clone(), cancel.clone());
        forwarders.spawn(async move {
            let mut last: Option<(u64, u64, Option<String>)> = None;
            loop {
                let s = rx.borrow_and_update().clone();
                // The heartbeat changes every round; only captures and the
                // pause reason are worth a line.
                let key = (s.timer, s.events, s.unknown.clone());
                if last.as_ref() != Some(&key) {
                    // The first line is the state at subscription, not a change.
                    let initial = last.is_none();
                    last = Some(key);
                    let status = serde_json::to_value(&s).unwrap_or(Value::Null);
                    let line = protocol::event(
                        "snapshot",
                        obj(vec![("status", status), ("initial", json!(initial))]),
                    );
                    if !push(&out, line, &cancel) {
                        return;
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    {
        // One event per Z sensor whose state changed (all of them first).
        let mut rx = shared.parts.touch.clone();
        let (out, cancel) = (out.clone(), cancel.clone());
        forwarders.spawn(async move {
            let mut last: Vec<crate::sensors::TouchState> = Vec::new();
            let mut initial = true;
            loop {
                let now = rx.borrow_and_update().sensors.clone();
                for s in now.iter().filter(|s| !last.contains(s)) {
                    let line = protocol::event(
                        "touch",
                        obj(vec![
                            ("stepper", json!(s.stepper)),
                            ("touching", json!(s.touching)),
                            ("error", json!(s.error)),
                            ("initial", json!(initial)),
                        ]),
                    );
                    if !push(&out, line, &cancel) {
                        return;
                    }
                }
                last = now;
                initial = false;
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    for b in &shared.parts.boards {
        let mut rx = b.watch();
        let (out, cancel) = (out.clone(), cancel.clone());
        forwarders.spawn(async move {
            // Keyed on the link's state, not its detail: a retry count or
            // a missed poll more is not a change of link.
            let mut last: Option<&'static str> = None;
            loop {
                let s = rx.borrow_and_update().clone();
                let link = s.link.name();
                if last != Some(link) {
                    // The first line is the state at subscription, not a change.
                    let initial = last.is_none();
                    last = Some(link);
                    let line = protocol::event(
                        "board",
                        obj(vec![
                            ("board", json!(s.name)),
                            ("link", json!(link)),
                            ("detail", json!(s.link.to_string())),
                            ("initial", json!(initial)),
                        ]),
                    );
                    if !push(&out, line, &cancel) {
                        return;
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    {
        let mut rx = operations;
        let (out, cancel) = (out.clone(), cancel.clone());
        forwarders.spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(line) => {
                        if !push(&out, line, &cancel) {
                            return;
                        }
                    }
                    // Missing an operation event would mislead the client: drop it.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        cancel.cancel();
                        return;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
    // Anything the client sends now is ignored; reading tells when it leaves.
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            n = lines.next() => match n {
                Some(Ok(_)) => {}
                _ => break,
            },
        }
    }
    forwarders.shutdown().await;
}
