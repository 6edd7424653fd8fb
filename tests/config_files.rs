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

/// The demo's configuration with `edits` (`from` → `to`, each the start of a
/// line) written to `dir`, and its text.
fn demo_with(dir: &Path, edits: &[(&str, &str)]) -> (PathBuf, String) {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml");
    let mut text = std::fs::read_to_string(demo).expect("demo config");
    for (from, to) in edits {
        let at = text
            .find(&format!("\n{from}"))
            .unwrap_or_else(|| panic!("no line starts with `{from}`"));
        text.replace_range(at + 1..at + 1 + from.len(), to);
    }
    let p = dir.join("three.toml");
    std::fs::write(&p, &text).expect("write");
    (p, text)
}

/// `file:line:column` of the start of the line that starts with `needle`.
fn at(file: &Path, text: &str, needle: &str, column: usize) -> String {
    let line = 1 + text
        .lines()
        .position(|l| l.starts_with(needle))
        .unwrap_or_else(|| panic!("no line starts with `{needle}`"));
    format!("{}:{line}:{column}", file.display())
}

/// Issue 16 item 8: one run of check-config names every mistake, in file
/// order, each with its line and column, key and what to do.
#[test]
fn check_config_reports_three_mistakes_in_one_run_in_file_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p, text) = demo_with(
        dir.path(),
        &[
            // A layout error (past the boards), an unknown key, a range error.
            ("x_index = 0", "x_index = 40"),
            ("tune_rest = 0.5", "tune_rset = 0.5"),
            ("link = \"latest\"", "link = \"latest\"\ninterval = \"1ms\""),
        ],
    );
    let (o, _) = run_with(&["check-config", "--quiet"], &p);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "three errors and the count: {err}");
    let x_index = at(&p, &text, "x_index", 11);
    assert!(
        lines[0].starts_with(&format!("stringdriverd: {x_index}: layout.x_index: ")),
        "{err}"
    );
    assert!(lines[0].contains("stepper 40"), "{err}");
    assert!(
        lines[1].starts_with(&format!(
            "stringdriverd: {}: operations.tune_rset: unknown field `tune_rset`, \
             did you mean `tune_rest`?",
            at(&p, &text, "tune_rset", 1)
        )),
        "{err}"
    );
    assert!(
        lines[2].starts_with(&format!(
            "stringdriverd: {}: snapshot.interval: ",
            at(&p, &text, "interval", 12)
        )),
        "{err}"
    );
    assert!(lines[2].contains("at least 10ms"), "{err}");
    assert_eq!(lines[3], format!("{}: 3 errors", p.display()), "{err}");
}

/// A value of the wrong type in a key that has a default is one error; the
/// check goes on past it (it blanks the value and checks the rest).
#[test]
fn check_config_goes_on_past_a_wrong_type_and_an_unknown_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p, _) = demo_with(
        dir.path(),
        &[("x_max = 2600", "x_max = \"big\""), ("[log]", "[logg]")],
    );
    let (o, _) = run_with(&["check-config", "--quiet"], &p);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].ends_with("layout.x_max: invalid type: string \"big\", expected an integer"),
        "{err}"
    );
    assert!(
        lines[1].contains("logg: unknown field `logg`, did you mean `log`?"),
        "{err}"
    );
}
