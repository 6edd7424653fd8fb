//! Any text as a configuration file: `config::parse` must never panic, every
//! error must say what is wrong, and a configuration that parses must print
//! (`Config::to_toml_string`, what `check-config` shows) as a file that
//! parses back to an equal configuration, as that method documents. And
//! since nothing downstream re-validates a `Config` (ARCHITECTURE.md), what
//! the daemon derives from one must not panic either: each board's spec, the
//! expected time of its longest move, and every duration as a deadline.
#![no_main]

use std::path::Path;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use stringdriverd::board::BoardSpec;
use stringdriverd::config::{self, Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    // `config::load` reads the file with `read_to_string`: a file that is not
    // UTF-8 is a read error before `parse` sees anything.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let origin = Path::new("fuzz.toml");
    match config::parse(text, origin) {
        Err(e) => check_error(&e),
        Ok(cfg) => {
            derived(&cfg);
            let printed = cfg.to_toml_string();
            let again = config::parse(&printed, origin).unwrap_or_else(|e| {
                panic!("the printed configuration does not parse: {e}\n--- input\n{text}\n--- printed\n{printed}")
            });
            assert!(
                again == cfg,
                "the printed configuration parses to a different one\n--- input\n{text}\n--- printed\n{printed}\n--- first\n{cfg:?}\n--- again\n{again:?}"
            );
        }
    }
});

fn check_error(e: &ConfigError) {
    let shown = e.to_string();
    assert!(!shown.trim().is_empty());
    assert!(shown.starts_with("fuzz.toml"), "{shown}");
    match e {
        ConfigError::Parse { message, key, .. } => {
            assert!(!message.trim().is_empty(), "{e:?}");
            assert!(key.as_deref() != Some(""), "{e:?}");
        }
        ConfigError::Invalid { message, key, .. } => {
            assert!(!message.trim().is_empty(), "{e:?}");
            assert!(!key.is_empty(), "{e:?}");
        }
        ConfigError::Hostname { reason, .. } => assert!(!reason.trim().is_empty(), "{e:?}"),
        ConfigError::Read { .. } | ConfigError::PasswordFile { .. } => {
            panic!("parse does no I/O, yet: {e}")
        }
    }
    if let Some(p) = e.position() {
        assert!(p.line >= 1 && p.column >= 1, "{e:?}");
    }
}

/// The daemon adds its durations to `Instant::now()` (reset waits, polls,
/// reply deadlines, a move's expected end) and to each other (a reply's
/// grace, the READY deadline): every one must leave room for that.
fn derived(cfg: &Config) {
    let now = Instant::now();
    let deadline = |what: &str, d: Duration| {
        let fits = d
            .checked_add(Duration::from_secs(3600))
            .and_then(|d| now.checked_add(d))
            .is_some();
        assert!(fits, "{what} = {d:?} overflows the clock");
    };
    for (i, b) in cfg.boards.iter().enumerate() {
        let spec = BoardSpec::from_config(cfg, i).expect("every configured board has a spec");
        assert_eq!(spec.steppers(), b.steppers);
        for local in 0..b.steppers {
            let (min, max) = cfg.layout.limits(cfg.layout.global(i, local));
            // The gate keeps targets inside the limits: this is the longest move.
            let steps = (i64::from(max) - i64::from(min)).unsigned_abs();
            deadline("a move's expected time", spec.move_duration(local, steps));
        }
        deadline("reset_wait", spec.reset_wait);
        deadline("poll_interval", spec.poll_interval);
        deadline("reply_timeout", spec.reply_timeout);
        deadline("move_margin", spec.move_margin);
    }
    deadline("snapshot.interval", cfg.snapshot.interval);
    deadline("snapshot.link_max_age", cfg.snapshot.link_max_age);
    deadline("feed.interval", cfg.feed.interval);
    deadline("feed.stale_after", cfg.feed.stale_after);
    deadline("database.connect_timeout", cfg.database.connect_timeout);
}
