//! Issue 15 item 4: silent clients never lock the operator out of the
//! control socket, and `stringdriverctl` says when the daemon refused it
//! (the daemon as a real process: `stringdriverd demo`).

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

const WAIT: Duration = Duration::from_secs(30);

/// The demo daemon serving its control socket at `socket`.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

fn ctl_status(socket: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_stringdriverctl"))
        .arg("--socket")
        .arg(socket)
        .args(["--json", "status"])
        .output()
        .expect("ctl runs")
}

async fn demo(dir: &Path, control: &str) -> (Demo, std::path::PathBuf) {
    let (child, socket) = common::spawn_demo_with(dir, 120, control);
    let demo = Demo(child);
    let deadline = tokio::time::Instant::now() + WAIT;
    // Answering: a status request succeeds.
    while !ctl_status(&socket).status.success() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the control socket never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (demo, socket)
}

/// One reply line of `stream`, as JSON.
async fn reply(stream: &mut BufReader<UnixStream>) -> Value {
    let mut line = String::new();
    let n = tokio::time::timeout(WAIT, stream.read_line(&mut line))
        .await
        .expect("a reply in time")
        .expect("read");
    assert!(n > 0, "closed without a reply");
    serde_json::from_str(&line).expect("json")
}

#[tokio::test]
async fn sixty_four_silent_clients_do_not_lock_the_operator_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_demo, socket) = demo(dir.path(), "").await;

    // Every slot taken by a client that made one request and fell silent
    // (the reply proves the daemon counts it).
    let mut silent = Vec::new();
    for i in 0..64 {
        let s = UnixStream::connect(&socket).await.expect("connect");
        let mut s = BufReader::new(s);
        let req = format!("{{\"v\":1,\"id\":{i},\"cmd\":\"status\"}}\n");
        s.get_mut().write_all(req.as_bytes()).await.expect("write");
        let r = reply(&mut s).await;
        assert_eq!(r["ok"], true, "client {i}: {r}");
        silent.push(s);
    }

    // The operator (root, the daemon's user) still gets an answer.
    let o = ctl_status(&socket);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(v["boards"].is_array(), "{v}");

    // The client silent the longest made room, and was told why.
    let first = silent.remove(0);
    let mut first = first;
    let r = reply(&mut first).await;
    assert_eq!(r["error"]["kind"], "idle_timeout", "{r}");
    // The others are still served.
    let s = silent.last_mut().expect("a client");
    s.get_mut()
        .write_all(b"{\"v\":1,\"id\":\"again\",\"cmd\":\"status\"}\n")
        .await
        .expect("write");
    let r = reply(s).await;
    assert_eq!(r["id"], "again", "{r}");
    assert_eq!(r["ok"], true, "{r}");
}

#[tokio::test]
async fn stringdriverctl_says_the_daemon_refused_the_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("full.sock");
    // A daemon with every slot taken answers a newcomer like this and closes.
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let line = "{\"v\":1,\"id\":null,\"ok\":false,\"error\":{\"kind\":\"too_many_clients\",\"message\":\"at most 64 clients at once\"}}\n";
        s.write_all(line.as_bytes()).await.expect("write");
    });
    let o = tokio::task::spawn_blocking({
        let socket = socket.clone();
        move || ctl_status(&socket)
    })
    .await
    .expect("ctl");
    server.await.expect("server");
    // --json: the error is a JSON object on stdout, with the same exit code.
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).expect("a JSON error");
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert_eq!(e["error"]["kind"], "too_many_clients", "{e}");
    let err = e["error"]["message"].as_str().unwrap_or_default();
    assert!(err.contains("refused the connection"), "{err}");
    assert!(err.contains("at most 64 clients"), "{err}");
    assert!(!err.contains("is the daemon running"), "{err}");
}

#[tokio::test]
async fn a_silent_client_is_closed_after_the_idle_timeout_but_a_subscriber_stays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_demo, socket) = demo(dir.path(), "idle_timeout = \"300ms\"").await;
    let mut silent = BufReader::new(UnixStream::connect(&socket).await.expect("connect"));
    let mut events = BufReader::new(UnixStream::connect(&socket).await.expect("connect"));
    events
        .get_mut()
        .write_all(b"{\"v\":1,\"id\":\"ev\",\"cmd\":\"events\"}\n")
        .await
        .expect("write");
    assert_eq!(reply(&mut events).await["result"]["events"], true);

    // The silent one is told why, then closed.
    let r = reply(&mut silent).await;
    assert_eq!(r["error"]["kind"], "idle_timeout", "{r}");
    let mut rest = String::new();
    let n = tokio::time::timeout(WAIT, silent.read_line(&mut rest))
        .await
        .expect("closed in time")
        .expect("read");
    assert_eq!(n, 0, "still open: {rest}");

    // The subscriber, silent for several idle timeouts, still gets its
    // events and no idle_timeout.
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < until {
        let ev = reply(&mut events).await;
        assert!(ev["event"].is_string(), "{ev}");
    }
}
