//! SIGHUP: which settings change at run time, and what a new file changes.

use crate::config::Config;

/// Settings applied at once on reload.
pub const LIVE: &[&str] = &[
    "operations",
    "thresholds",
    "snapshot.interval",
    "snapshot.link_max_age",
];

/// Differences between the running configuration and a new one: what is
/// applied now and what needs a restart.
#[derive(Debug, Default, PartialEq)]
pub struct Diff {
    /// Changed and applied now (key: old -> new).
    pub applied: Vec<String>,
    /// Changed but only taking effect after a restart.
    pub need_restart: Vec<String>,
}

/// What a reload to `new` changes while the daemon runs `current` (live
/// settings, as of the last reload) and was started with `started` (every
/// restart-only setting still runs as it was at start, so a change made by
/// one reload is still reported by the next).
pub fn diff_running(started: &Config, current: &Config, new: &Config) -> Diff {
    Diff {
        applied: diff(current, new).applied,
        need_restart: diff(started, new).need_restart,
    }
}

/// Compares two configurations.
pub fn diff(old: &Config, new: &Config) -> Diff {
    let mut d = Diff::default();
    let mut live = |key: &str, a: String, b: String| {
        if a != b {
            d.applied.push(format!("{key}: {a} -> {b}"));
        }
    };
    let (o, n) = (&old.operations, &new.operations);
    live(
        "operations.bump_check_enable",
        o.bump_check_enable.to_string(),
        n.bump_check_enable.to_string(),
    );
    live(
        "operations.z_up_step",
        o.z_up_step.to_string(),
        n.z_up_step.to_string(),
    );
    live(
        "operations.z_down_step",
        o.z_down_step.to_string(),
        n.z_down_step.to_string(),
    );
    live(
        "operations.tune_rest",
        o.tune_rest.to_string(),
        n.tune_rest.to_string(),
    );
    live(
        "operations.x_rest",
        o.x_rest.to_string(),
        n.x_rest.to_string(),
    );
    live(
        "operations.z_rest",
        o.z_rest.to_string(),
        n.z_rest.to_string(),
    );
    live(
        "operations.lap_rest",
        o.lap_rest.to_string(),
        n.lap_rest.to_string(),
    );
    live(
        "operations.adjustment_level",
        o.adjustment_level.to_string(),
        n.adjustment_level.to_string(),
    );
    live(
        "operations.retry_threshold",
        o.retry_threshold.to_string(),
        n.retry_threshold.to_string(),
    );
    live(
        "operations.delta_threshold",
        o.delta_threshold.to_string(),
        n.delta_threshold.to_string(),
    );
    live(
        "operations.z_variance_threshold",
        o.z_variance_threshold.to_string(),
        n.z_variance_threshold.to_string(),
    );
    live(
        "operations.x_start",
        o.x_start.to_string(),
        n.x_start.to_string(),
    );
    live(
        "operations.x_finish",
        o.x_finish.to_string(),
        n.x_finish.to_string(),
    );
    live(
        "operations.x_step",
        o.x_step.to_string(),
        n.x_step.to_string(),
    );
    live(
        "operations.tuner_step",
        o.tuner_step.to_string(),
        n.tuner_step.to_string(),
    );
    live(
        "operations.sweep_max_passes",
        o.sweep_max_passes.to_string(),
        n.sweep_max_passes.to_string(),
    );
    live(
        "operations.sweep_max_calibrations",
        o.sweep_max_calibrations.to_string(),
        n.sweep_max_calibrations.to_string(),
    );
    let (t, u) = (&old.thresholds, &new.thresholds);
    live(
        "thresholds.voice_count_min",
        format!("{:?}", t.voice_count_min),
        format!("{:?}", u.voice_count_min),
    );
    live(
        "thresholds.voice_count_max",
        format!("{:?}", t.voice_count_max),
        format!("{:?}", u.voice_count_max),
    );
    live(
        "thresholds.amp_sum_min",
        format!("{:?}", t.amp_sum_min),
        format!("{:?}", u.amp_sum_min),
    );
    live(
        "thresholds.amp_sum_max",
        format!("{:?}", t.amp_sum_max),
        format!("{:?}", u.amp_sum_max),
    );
    live(
        "snapshot.interval",
        format!("{:?}", old.snapshot.interval),
        format!("{:?}", new.snapshot.interval),
    );
    live(
        "snapshot.link_max_age",
        format!("{:?}", old.snapshot.link_max_age),
        format!("{:?}", new.snapshot.link_max_age),
    );
    let mut restart = |key: &str, changed: bool| {
        if changed {
            d.need_restart.push(key.to_string());
        }
    };
    restart("host", old.host != new.host);
    restart("boards", old.boards != new.boards);
    restart("layout", old.layout != new.layout);
    restart("motor", old.motor != new.motor);
    restart("snapshot.link", old.snapshot.link != new.snapshot.link);
    restart("feed", old.feed != new.feed);
    restart("database", old.database != new.database);
    restart("spool", old.spool != new.spool);
    restart("control", old.control != new.control);
    restart("compat", old.compat != new.compat);
    restart("log", old.log != new.log);
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).expect("write");
        crate::config::load(&path).expect("valid")
    }

    #[test]
    fn restart_only_change_is_still_reported_by_the_next_reload() {
        let base =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml"))
                .expect("demo config");
        let started = config(&base);
        let changed_text = base.replacen("host = \"stringdriver-demo\"", "host = \"other\"", 1);
        assert_ne!(changed_text, base, "the demo file names its host");
        let changed = config(&changed_text);
        // First reload: host changed, needs a restart.
        let first = diff_running(&started, &started, &changed);
        assert_eq!(first.need_restart, ["host"]);
        // Second reload of the same file: the old host still runs.
        let second = diff_running(&started, &changed, &changed);
        assert_eq!(second.need_restart, ["host"]);
        assert!(second.applied.is_empty());
        // Back to the running value: nothing pending any more.
        let back = diff_running(&started, &changed, &started);
        assert!(back.need_restart.is_empty());
    }

    #[test]
    fn motor_parameters_in_the_file_need_a_restart() {
        let base =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml"))
                .expect("demo config");
        let started = config(&base);
        let changed = config(&format!("{base}\n[motor.z]\nspeed = 150\n"));
        let d = diff_running(&started, &started, &changed);
        assert_eq!(d.need_restart, ["motor"]);
        assert!(d.applied.is_empty());
    }
}
