//! The console's one `events` subscription to the daemon, fanned out to
//! every browser: a bounded broadcast ring of ready-made SSE messages, so
//! that a browser that reads slowly loses lines (and is told how many)
//! instead of slowing the reading of the socket, which the daemon would
//! answer by dropping the console.
//!
//! Beside it a poller asks the daemon for `status` after each burst of
//! events (coalesced: one request in flight, whatever the number of
//! browsers) and at least every [`STATUS_EVERY`], since the events carry
//! no positions. Nothing is polled while no browser listens.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, watch, Notify};
use tokio_util::sync::CancellationToken;

use super::daemon_link::DaemonLink;
use crate::backoff::Backoff;

/// Messages a browser may fall behind by before it loses some.
pub const RING: usize = 512;

/// Longest time between two `status` messages while browsers listen.
pub const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Shortest time between two `status` requests: at most 20 a second,
/// the snapshot rate the page is built for, however many events arrive
/// (an operation's steps, a burst of touch changes).
pub const STATUS_MIN_GAP: Duration = Duration::from_millis(50);

/// One Server-Sent Event: its name and its JSON data on one line.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// `hello`, `status`, `daemon`, `link` or `lagged`.
    pub event: &'static str,
    /// The data line (JSON without newlines).
    pub data: Arc<str>,
}

impl Message {
    /// A message with `data`.
    pub fn new(event: &'static str, data: impl Into<Arc<str>>) -> Message {
        Message {
            event,
            data: data.into(),
        }
    }

    /// `link` saying the daemon is lost, and why.
    pub fn lost(error: &str) -> Message {
        Message::new(
            "link",
            json!({"connected": false, "error": error}).to_string(),
        )
    }
}

/// The fan-out point shared by every SSE response.
#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<Arc<Message>>,
    /// Whether the events subscription is up (and why not).
    link: watch::Receiver<Result<(), String>>,
    poke: Arc<Notify>,
    daemon: DaemonLink,
    stop: CancellationToken,
}

impl Hub {
    /// Starts the subscription and the status poller on `socket`; both end
    /// with `stop`.
    pub fn start(socket: PathBuf, stop: CancellationToken) -> Hub {
        let (tx, _) = broadcast::channel(RING);
        let (link_tx, link) = watch::channel(Err("not connected yet".to_string()));
        let hub = Hub {
            tx,
            link,
            poke: Arc::new(Notify::new()),
            daemon: DaemonLink::new(socket.clone()),
            stop,
        };
        tokio::spawn(subscribe_forever(hub.clone(), socket, link_tx));
        tokio::spawn(poll_status(hub.clone()));
        hub
    }

    /// Cancelled when the console stops (SSE responses end then).
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// A new browser's messages: its first message (`hello` with a fresh
    /// status, or `link` when the daemon cannot be reached) and the
    /// receiver of everything after. Subscribing comes first, so that
    /// nothing published while the status is fetched is missed.
    pub async fn join(&self) -> (Message, broadcast::Receiver<Arc<Message>>) {
        let rx = self.tx.subscribe();
        let first = match self.daemon.result("status").await {
            Ok(status) => Message::new("hello", status.to_string()),
            Err(e) => Message::lost(&e.to_string()),
        };
        (first, rx)
    }

    fn publish(&self, m: Message) {
        // No receiver is no error: nobody is looking.
        let _ = self.tx.send(Arc::new(m));
    }
}

/// Keeps one `events` subscription up, reconnecting with backoff, and
/// publishes its lines; announces losses and returns (`link`, a fresh `hello`).
async fn subscribe_forever(hub: Hub, socket: PathBuf, link: watch::Sender<Result<(), String>>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut first = true;
    loop {
        let lost = tokio::select! {
            _ = hub.stop.cancelled() => return,
            r = follow(&hub, &socket, &link, &mut backoff) => r,
        };
        if link.borrow().is_ok() || first {
            // Announced once per loss, not once per failed retry.
            tracing::warn!(error = %lost, "console: daemon link lost");
            hub.publish(Message::lost(&lost));
        }
        first = false;
        let _previous = link.send_replace(Err(lost));
        tokio::select! {
            _ = hub.stop.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// One subscription, until it breaks: the error saying why.
async fn follow(
    hub: &Hub,
    socket: &std::path::Path,
    link: &watch::Sender<Result<(), String>>,
    backoff: &mut Backoff,
) -> String {
    let stream = match UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e) => return format!("cannot connect to {}: {e}", socket.display()),
    };
    let (r, mut w) = stream.into_split();
    let req =
        json!({"v": crate::control::protocol::VERSION, "id": "console-events", "cmd": "events"});
    if let Err(e) = w.write_all(format!("{req}\n").as_bytes()).await {
        return format!("cannot subscribe to events: {e}");
    }
    let mut lines = BufReader::new(r).lines();
    match lines.next_line().await {
        Ok(Some(l)) => match serde_json::from_str::<Value>(&l) {
            Ok(v) if v["ok"] == json!(true) => {}
            _ => return format!("the daemon refused the events subscription: {l}"),
        },
        Ok(None) => return "the daemon closed the connection".into(),
        Err(e) => return format!("cannot read from the daemon: {e}"),
    }
    backoff.reset();
    let was_down = link.borrow().is_err();
    let _previous = link.send_replace(Ok(()));
    if was_down {
        hub.publish(Message::new("link", json!({"connected": true}).to_string()));
        if let Ok(status) = hub.daemon.result("status").await {
            hub.publish(Message::new("hello", status.to_string()));
        }
    }
    loop {
        match lines.next_line().await {
            Ok(Some(l)) => {
                hub.publish(Message::new("daemon", l));
                hub.poke.notify_one();
            }
            Ok(None) => return "the daemon closed the events stream".into(),
            Err(e) => return format!("cannot read the events stream: {e}"),
        }
    }
}

/// Publishes a fresh `status` after each burst of events (at most one per
/// [`STATUS_MIN_GAP`]) and at least every [`STATUS_EVERY`], while a
/// browser listens and the link is up.
async fn poll_status(hub: Hub) {
    loop {
        tokio::select! {
            _ = hub.stop.cancelled() => return,
            // A permit stored while a request ran: the burst coalesces into one.
            _ = hub.poke.notified() => {}
            _ = tokio::time::sleep(STATUS_EVERY) => {}
        }
        if hub.tx.receiver_count() == 0 || hub.link.borrow().is_err() {
            continue;
        }
        let started = tokio::time::Instant::now();
        if let Ok(status) = hub.daemon.result("status").await {
            hub.publish(Message::new("status", status.to_string()));
        }
        tokio::select! {
            _ = hub.stop.cancelled() => return,
            _ = tokio::time::sleep_until(started + STATUS_MIN_GAP) => {}
        }
    }
}
