//! `stringdriverd run` as systemd starts it, with a real `$NOTIFY_SOCKET`
//! (a datagram socket this test binds) and a watchdog: what the daemon tells
//! systemd, message by message.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::machine::{MachineOptions, SimMachine};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// `WATCHDOG_USEC`: 2 s, so the daemon checks its heartbeat every second.
const WATCHDOG_USEC: &str = "2000000";

#[test]
fn ready_carries_a_status_and_the_first_watchdog_check_pings() {
    let machine = SimMachine::start(MachineOptions::new("sd-notify"));
    let notify_path = machine.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let child = Command::new(env!("CARGO_BIN_EXE_stringdriverd"))
        .args(["run", "--config"])
        .arg(&machine.cfg_path)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", WATCHDOG_USEC)
        .env_remove("WATCHDOG_PID")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("daemon starts");

    let mut messages: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 4096];
    // Until READY and two watchdog pings have come (a generous bound).
    while Instant::now() < deadline {
        let pings = messages
            .iter()
            .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
            .count();
        if pings >= 2 && messages.iter().any(|m| m.lines().any(|l| l == "READY=1")) {
            break;
        }
        if let Ok(n) = sock.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let out = child.wait_with_output().expect("daemon ends");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");

    let ready = messages
        .iter()
        .find(|m| m.lines().any(|l| l == "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1 in {messages:?}"));
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("STATUS=") && l.len() > "STATUS=".len()),
        "READY without STATUS: {ready:?}"
    );
    let pings = messages
        .iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count();
    assert!(pings >= 2, "{messages:?}\n{log}");
    // The first checks found a heartbeat: no ping was withheld at start.
    assert!(!log.contains("withholding the watchdog ping"), "{log}");
}
