//! Clients of the daemon's control socket for the tests: a persistent
//! [`Client`] that checks ids and versions, one-shot [`request`]s, and waits
//! on the structured `status` reply (never on the text `stringdriverctl`
//! prints: "shipper: not connected" contains "connected" too).

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::machine::WAIT;

/// One client connection.
pub struct Client {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    write: tokio::net::unix::OwnedWriteHalf,
    next_id: u64,
}

impl Client {
    /// Connects to the socket at `path`.
    pub async fn connect(path: &Path) -> Client {
        let s = UnixStream::connect(path).await.expect("connect");
        let (r, w) = s.into_split();
        Client {
            lines: BufReader::new(r).lines(),
            write: w,
            next_id: 0,
        }
    }

    /// Writes `bytes` as they are (several lines at once, a partial line).
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.write.write_all(bytes).await.expect("write");
    }

    /// Writes `line` and a newline, as is.
    pub async fn send_raw(&mut self, line: &str) {
        self.write
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write");
    }

    /// The next line, parsed; `None` when the daemon closed the connection.
    pub async fn read(&mut self) -> Option<Value> {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("a reply in time")
            .ok()??;
        Some(serde_json::from_str(&line).expect("reply is JSON"))
    }

    /// Sends `req` (with v and a fresh id) and returns the reply, checking the id.
    pub async fn call(&mut self, mut req: Value) -> Value {
        self.next_id += 1;
        req["v"] = json!(1);
        req["id"] = json!(self.next_id);
        self.send_raw(&req.to_string()).await;
        let r = self.read().await.expect("reply");
        assert_eq!(r["id"], json!(self.next_id), "{r}");
        assert_eq!(r["v"], json!(1), "{r}");
        r
    }

    /// The result of a request that must succeed.
    pub async fn ok(&mut self, req: Value) -> Value {
        let r = self.call(req.clone()).await;
        assert_eq!(r["ok"], json!(true), "{req} -> {r}");
        r["result"].clone()
    }

    /// The message of a request that must fail with error `kind`.
    pub async fn err(&mut self, req: Value, kind: &str) -> String {
        let r = self.call(req.clone()).await;
        assert_eq!(r["ok"], json!(false), "{req} -> {r}");
        assert_eq!(r["error"]["kind"], json!(kind), "{req} -> {r}");
        r["error"]["message"].as_str().expect("message").to_string()
    }
}

/// One request on a fresh connection: the reply's `result`, or the error as
/// `kind: message`.
pub async fn request(socket: &Path, body: Value, timeout: Duration) -> Result<Value, String> {
    let attempt = async {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (r, mut w) = stream.into_split();
        let mut line = body.to_string();
        line.push('\n');
        w.write_all(line.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut reply = String::new();
        let n = BufReader::new(r)
            .read_line(&mut reply)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the daemon closed the connection".to_string());
        }
        let v: Value =
            serde_json::from_str(&reply).map_err(|e| format!("bad reply {reply:?}: {e}"))?;
        if v["ok"] == json!(true) {
            Ok(v["result"].clone())
        } else {
            Err(format!("{}: {}", v["error"]["kind"], v["error"]["message"]))
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no reply within {timeout:?}")))
}

/// The daemon's `status` result, or `None` while it does not answer.
pub async fn status(socket: &Path) -> Option<Value> {
    request(
        socket,
        json!({"v": 1, "cmd": "status"}),
        Duration::from_secs(5),
    )
    .await
    .ok()
}

/// Whether a `status` result shows every board connected with every counter
/// trusted: manual moves and operations can then run.
pub fn boards_ready(status: &Value) -> bool {
    status["boards"].as_array().is_some_and(|boards| {
        !boards.is_empty()
            && boards.iter().all(|b| {
                b["link"] == "connected"
                    && b["trusted"]
                        .as_array()
                        .is_some_and(|t| !t.is_empty() && t.iter().all(|v| v == true))
            })
    })
}

/// Whether a `status` result shows every board connected (counters may be
/// untrusted still).
pub fn boards_connected(status: &Value) -> bool {
    status["boards"]
        .as_array()
        .is_some_and(|boards| !boards.is_empty() && boards.iter().all(|b| b["link"] == "connected"))
}

/// `stringdriverctl --socket SOCKET ARGS...` as a process, off the runtime.
pub async fn ctl(socket: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_stringdriverctl"));
    cmd.arg("--socket").arg(socket).args(args);
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("stringdriverctl runs")
}

/// Waits until the daemon's `status` satisfies `pred` (polled on the
/// structured reply) and returns it; fails naming `what` after [`WAIT`].
pub async fn wait_status(socket: &Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(st) = status(socket).await {
            if pred(&st) {
                return st;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "waited for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether process `pid` has a handler installed for `signal` (the `SigCgt`
/// mask of /proc/PID/status): the readiness to wait for before sending it a
/// signal it must handle, which no output says reliably.
pub fn catches(pid: u32, signal: nix::sys::signal::Signal) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signal as i32 - 1)) != 0)
}
