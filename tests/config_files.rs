//! The configuration file as the binary reads it, when it is not what it
//! should be (issue 15 items 3 and 7): a FIFO, a device, a huge file, text
//! that is not UTF-8, a missing file. Every command fails quickly, with a
//! message that says what is wrong once.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Far above what a refusal takes, far below "hangs".
const QUICK: Duration = Duration::from_secs(5);

/// Runs `stringdriverd <args…> --config <config>`, killing it if it has not
/// finished within [`QUICK`] (a hang fails the test instead of blocking it).
fn run_with(args: &[&str], config: &Path) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stringdriverd"))
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    while child.try_wait().expect("waits").is_none() {
        if started.elapsed() > QUICK {
            child.kill().expect("kill");
            let out = child.wait_with_output().expect("output");
            panic!(
                "stringdriverd {args:?} --config {} still running after {QUICK:?}: {}",
                config.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Polling a child's exit with a bound: there is no event to wait on
        // with a timeout in std.
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (out, started.elapsed())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn fifo(dir: &Path) -> PathBuf {
    let p = dir.join("stringdriver.toml");
    nix::unistd::mkfifo(&p, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    p
}

#[test]
fn a_fifo_as_the_configuration_is_refused_at_once_by_every_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = fifo(dir.path());
    for args in [&["check-config"][..], &["spool-status"], &["run"]] {
        let (o, took) = run_with(args, &p);
        let err = stderr(&o);
        assert!(!o.status.success(), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "{}: cannot read the configuration file: not a regular file (it is a FIFO)",
                p.display()
            )),
            "{args:?}: {err}"
        );
        assert!(took < QUICK, "{args:?} took {took:?}");
    }
}

#[test]
fn dev_zero_as_the_configuration_is_refused_not_read_until_memory_runs_out() {
    let (o, _) = run_with(&["check-config"], Path::new("/dev/zero"));
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("/dev/zero: cannot read the configuration file: not a regular file (it is a character device)"),
        "{err}"
    );
}

#[test]
fn a_configuration_over_one_mebibyte_is_refused_naming_the_cap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("huge.toml");
    let mut text = "# padding\n".repeat(110_000);
    text.push_str("host = \"x\"\n");
    std::fs::write(&p, text).expect("write");
    let (o, _) = run_with(&["check-config"], &p);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("larger than 1048576 bytes"), "{err}");
}

#[test]
fn a_missing_configuration_says_the_os_error_once() {
    let (o, _) = run_with(
        &["check-config"],
        Path::new("/nonexistent/stringdriver.toml"),
    );
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "the OS error text once: {err}"
    );
}

#[test]
fn a_configuration_that_is_not_utf8_says_where() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("latin1.toml");
    // "café" in Latin-1: the 0xe9 byte is on line 3, column 9.
    let mut bytes = b"# host name\n\n# le caf".to_vec();
    bytes.push(0xe9);
    bytes.extend_from_slice(b"\nhost = \"x\"\n");
    std::fs::write(&p, bytes).expect("write");
    let (o, _) = run_with(&["check-config"], &p);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "{}:3:9: not UTF-8 text: byte 0xe9 at byte offset 21",
            p.display()
        )),
        "{err}"
    );
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/stringdriver.example.toml")
}

/// The example reads its sensors through GPIO: a build with the `gpio`
/// feature (the default) accepts it.
#[cfg(feature = "gpio")]
#[test]
fn check_config_accepts_the_gpio_example_in_a_build_with_gpio() {
    let (o, _) = run_with(&["check-config"], &example());
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("bias = \"pull-up\""), "{out}");
}

/// A build without the `gpio` feature cannot run the example: check-config
/// says so instead of passing a configuration the daemon would refuse.
#[cfg(not(feature = "gpio"))]
#[test]
fn check_config_says_a_build_without_gpio_cannot_read_the_examples_sensors() {
    let (o, _) = run_with(&["check-config"], &example());
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("sensors.backend"), "{err}");
    assert!(err.contains("cannot read GPIO"), "{err}");
}
