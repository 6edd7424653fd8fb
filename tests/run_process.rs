//! `stringdriverd run` as a process. With FIFOs in place of audmon's feed
//! files and then of its configuration (issue 15 item 3): the feed is
//! reported invalid, saying so, a SIGHUP reload of a FIFO configuration is
//! refused without blocking, and SIGTERM stops the daemon within 5 s. And
//! the touch sensors' states in `status` and on the `events` stream. No
//! boards are attached (their ports do not exist) and the database is
//! unreachable: the daemon runs on, spooling, as it would on a host whose
//! database is down.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn manifest(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// The demo configuration moved into `dir`, with a database nobody serves.
fn config_in(dir: &Path) -> PathBuf {
    let mut text = std::fs::read_to_string(manifest("config/demo.toml"))
        .expect("demo config")
        .replace("/tmp/stringdriverd-demo", &dir.display().to_string())
        .replace("backend = \"simulated\"", "backend = \"none\"")
        // The simulated X switches go with the simulated backend.
        .replace("x_switches = \"two\"\n", "");
    text.push_str(
        "\n[database]\nurl = \"postgres://postgres@127.0.0.1:1/none\"\nauto_migrate = true\n",
    );
    let f = dir.join("stringdriver.toml");
    std::fs::write(&f, text).expect("write");
    f
}

/// The daemon's `status --json`, if it answers.
fn status(socket: &Path) -> Option<serde_json::Value> {
    let o = Command::new(env!("CARGO_BIN_EXE_stringdriverctl"))
        .arg("--socket")
        .arg(socket)
        .args(["--json", "status"])
        .output()
        .ok()?;
    serde_json::from_slice(&o.stdout).ok()
}

struct Daemon(Child);

impl Daemon {
    fn start(cfg: &Path) -> Daemon {
        Daemon(
            Command::new(env!("CARGO_BIN_EXE_stringdriverd"))
                .args(["run", "--config"])
                .arg(cfg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starts"),
        )
    }
}

/// Asks `status` until `pick` finds what it wants in the reply (30 s at most).
fn status_until<T>(
    daemon: &mut Daemon,
    socket: &Path,
    what: &str,
    mut pick: impl FnMut(&serde_json::Value) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(found) = status(socket).as_ref().and_then(&mut pick) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} in status within 30 s: {:?}",
            status(socket)
        );
        assert!(
            daemon.0.try_wait().expect("wait").is_none(),
            "daemon exited"
        );
        // Asking again: the condition is a structured field of the reply.
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn fifos_as_feed_files_and_as_the_reloaded_configuration_block_nothing_and_sigterm_stops_the_daemon(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let shm = dir.path().join("shm");
    std::fs::create_dir(&shm).expect("shm");
    for name in ["audio_control", "audio_peaks"] {
        nix::unistd::mkfifo(&shm.join(name), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    }
    let cfg = config_in(dir.path());
    let mut daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_stringdriverd"))
            .args(["run", "--config"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starts"),
    );
    let socket = dir.path().join("control.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    let feed = loop {
        if let Some(s) = status(&socket) {
            let feed = &s["feed"];
            if feed["state"] == "invalid" {
                break feed.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no invalid feed in status within 30 s: {:?}",
            status(&socket)
        );
        assert!(
            daemon.0.try_wait().expect("wait").is_none(),
            "daemon exited"
        );
        // Asking again: the condition is a structured field of the reply.
        std::thread::sleep(Duration::from_millis(100));
    };
    let detail = feed["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("not a regular file (it is a FIFO)"),
        "{detail}"
    );
    assert!(feed["voice_count"].is_null(), "{feed}");

    // The configuration becomes a FIFO, and a reload is asked for: it is
    // refused at once (it used to block the daemon's main loop for ever).
    std::fs::remove_file(&cfg).expect("remove");
    nix::unistd::mkfifo(&cfg, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let pid = Pid::from_raw(daemon.0.id() as i32);
    kill(pid, Signal::SIGHUP).expect("SIGHUP");
    assert!(
        status(&socket).is_some(),
        "still answering after the reload"
    );

    kill(pid, Signal::SIGTERM).expect("SIGTERM");
    let stopping = Instant::now();
    loop {
        if let Some(code) = daemon.0.try_wait().expect("wait") {
            assert!(code.success(), "exit {code:?}");
            break;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `backend = "none"`: every Z sensor (12 for 6 strings) is in `status`
/// and on the `events` stream, unreadable and saying why.
#[test]
fn every_z_sensors_state_is_in_status_and_on_the_events_stream() {
    use std::io::{BufRead, BufReader, Write};

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config_in(dir.path());
    let mut daemon = Daemon::start(&cfg);
    let socket = dir.path().join("control.sock");
    let sensors = status_until(&mut daemon, &socket, "touch states", |s| {
        s["touch"]["sensors"]
            .as_array()
            .filter(|a| !a.is_empty())
            .cloned()
    });
    let steppers: Vec<u64> = sensors
        .iter()
        .filter_map(|t| t["stepper"].as_u64())
        .collect();
    assert_eq!(steppers, (1..=12).collect::<Vec<u64>>());
    for t in &sensors {
        assert!(t["touching"].is_null(), "{t}");
        assert!(
            t["error"].as_str().is_some_and(|e| e.contains("disabled")),
            "{t}"
        );
    }

    let stream = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    (&stream)
        .write_all(b"{\"v\":1,\"id\":\"e\",\"cmd\":\"events\"}\n")
        .expect("subscribe");
    let mut touched = Vec::new();
    for line in BufReader::new(&stream).lines() {
        let line = line.expect("an event line within 10 s");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        if v["event"] == "touch" {
            assert!(v["touching"].is_null(), "{v}");
            touched.push(v["stepper"].as_u64().expect("stepper"));
            if touched.len() == 12 {
                break;
            }
        }
    }
    assert_eq!(touched, (1..=12).collect::<Vec<u64>>());
}
