//! Requests to the daemon over its control socket: one fresh connection per
//! request, so a long request (a `stop` waiting for the steppers, an
//! `op_run` with `wait`) never holds up another, and a daemon restarted in
//! between is simply found again by the next request.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::Semaphore;

/// Requests the console has in flight at most: the daemon serves 64
/// clients, and browsers must never be able to take all of them (the
/// operator's `stringdriverctl` needs one). More wait their turn.
pub const MAX_IN_FLIGHT: usize = 8;

/// How long one request may take before the browser is told so; the
/// longest ordinary request (`stop`) waits for moving steppers, seconds.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The socket cannot be reached, or the daemon closed it.
    #[error("the daemon cannot be reached at {socket}: {cause}")]
    Unreachable {
        /// The control socket.
        socket: String,
        /// Why.
        cause: String,
    },
    /// No reply within [`REQUEST_TIMEOUT`].
    #[error("the daemon did not answer within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout,
}

/// The console's requests to one daemon.
#[derive(Clone)]
pub struct DaemonLink {
    socket: Arc<PathBuf>,
    slots: Arc<Semaphore>,
    next_id: Arc<AtomicU64>,
}

impl DaemonLink {
    /// Requests to the control socket at `socket`.
    pub fn new(socket: PathBuf) -> DaemonLink {
        DaemonLink {
            socket: Arc::new(socket),
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// The control socket's path.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// Sends `request` (`v` added when absent, `id` the console's own) and
    /// returns the daemon's reply object as it is.
    pub async fn call(&self, mut request: Map<String, Value>) -> Result<Value, LinkError> {
        request
            .entry("v")
            .or_insert(json!(crate::control::protocol::VERSION));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        request.insert("id".into(), json!(format!("console-{id}")));
        let mut line = Value::Object(request).to_string();
        line.push('\n');
        // The semaphore is never closed: acquiring cannot fail.
        let _slot = self.slots.acquire().await.ok();
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(&line))
            .await
            .map_err(|_| LinkError::Timeout)?
    }

    /// The `result` of a request that must succeed (the console's own
    /// `status` polls); a refusal is reported as unreachable, with its text.
    pub async fn result(&self, cmd: &str) -> Result<Value, LinkError> {
        let mut req = Map::new();
        req.insert("cmd".into(), json!(cmd));
        let reply = self.call(req).await?;
        if reply["ok"] == json!(true) {
            Ok(reply["result"].clone())
        } else {
            Err(self.unreachable(format!("{cmd}: {}", reply["error"])))
        }
    }

    fn unreachable(&self, cause: impl ToString) -> LinkError {
        LinkError::Unreachable {
            socket: self.socket.display().to_string(),
            cause: cause.to_string(),
        }
    }

    async fn exchange(&self, line: &str) -> Result<Value, LinkError> {
        let stream = UnixStream::connect(&*self.socket)
            .await
            .map_err(|e| self.unreachable(e))?;
        let (r, mut w) = stream.into_split();
        w.write_all(line.as_bytes())
            .await
            .map_err(|e| self.unreachable(e))?;
        let mut reply = String::new();
        let n = BufReader::new(r)
            .read_line(&mut reply)
            .await
            .map_err(|e| self.unreachable(e))?;
        if n == 0 {
            return Err(self.unreachable("the daemon closed the connection without a reply"));
        }
        serde_json::from_str(&reply)
            .map_err(|e| self.unreachable(format!("unreadable reply ({e})")))
    }
}
