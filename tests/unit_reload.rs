//! The unit's `ExecReload=` as systemd runs it: the commands are taken from
//! systemd/stringdriverd.service, the check runs for real on a good and on a
//! broken file, and only after a passing check would the daemon get SIGHUP.

use std::path::{Path, PathBuf};
use std::process::Command;

fn manifest(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// The `ExecReload=` command lines of the unit, in order, split into words.
fn exec_reload() -> Vec<Vec<String>> {
    let unit = std::fs::read_to_string(manifest("systemd/stringdriverd.service")).expect("unit");
    unit.lines()
        .filter_map(|l| l.strip_prefix("ExecReload="))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// Runs a unit command line with the installed paths replaced by the built
/// binary and `config`.
fn run_check(words: &[String], config: &Path) -> std::process::Output {
    let args: Vec<String> = words[1..]
        .iter()
        .map(|w| {
            if w == "/etc/stringdriver/stringdriver.toml" {
                config.display().to_string()
            } else {
                w.clone()
            }
        })
        .collect();
    Command::new(env!("CARGO_BIN_EXE_stringdriverd"))
        .args(args)
        .output()
        .expect("check runs")
}

#[test]
fn reload_checks_the_file_before_it_signals_the_daemon() {
    let lines = exec_reload();
    assert_eq!(lines.len(), 2, "{lines:?}");
    // systemd runs ExecReload= lines in order and stops at the first failure.
    assert_eq!(lines[0][0], "/usr/bin/stringdriverd", "{lines:?}");
    assert_eq!(lines[0][1], "check-config", "{lines:?}");
    assert_eq!(lines[1], ["/bin/kill", "-HUP", "$MAINPID"], "{lines:?}");

    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.toml");
    std::fs::copy(manifest("config/demo.toml"), &good).expect("copy");
    let o = run_check(&lines[0], &good);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // --quiet: no resolved file in the journal on every reload.
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(&good).expect("read");
    std::fs::write(&bad, text.replacen("int_bytes = 2", "int_bytes = 3", 1)).expect("write");
    let o = run_check(&lines[0], &bad);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a broken file must fail the reload");
    assert!(err.contains("bad.toml:"), "{err}");
}
