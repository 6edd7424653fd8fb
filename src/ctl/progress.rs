//! The daemon's events for people: what `stringdriverctl op run --wait`,
//! `op wait` and `events` print, as pure functions of the event JSON (see
//! `stringdriverd::control` for the events). An operation's steps read as
//! "z_calibrate: stepper 5 (z2in, Z in, string 2) descending, at 14; 3 of
//! 12 done"; a sweep's pass as one line with its X, pass and next step.

use serde_json::Value;

use super::fmt::scalar;

/// Which events to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter {
    /// Operations: started, steps, a sweep's passes, ended.
    pub operations: bool,
    /// Board links (a change of state, not of detail).
    pub boards: bool,
    /// Snapshot counters.
    pub snapshots: bool,
    /// Touch sensor changes.
    pub touch: bool,
    /// The state at subscription (each board's link, the snapshot
    /// counters): useful when following `events`, noise while waiting for
    /// an operation.
    pub initial: bool,
}

impl Filter {
    /// While waiting for an operation: the operation and real board link
    /// changes only.
    pub const WAIT: Filter = Filter {
        operations: true,
        boards: true,
        snapshots: false,
        touch: false,
        initial: false,
    };

    /// `events` with the kinds asked for; none asked for: everything but
    /// snapshots.
    pub fn events(operations: bool, boards: bool, snapshots: bool, touch: bool) -> Filter {
        if operations || boards || snapshots || touch {
            Filter {
                operations,
                boards,
                snapshots,
                touch,
                initial: true,
            }
        } else {
            Filter {
                operations: true,
                boards: true,
                snapshots: false,
                touch: true,
                initial: true,
            }
        }
    }

    /// Whether `ev` passes.
    pub fn passes(&self, ev: &Value) -> bool {
        if ev["initial"] == true && !self.initial {
            return false;
        }
        match ev["event"].as_str() {
            Some("operation") => self.operations,
            Some("board") => self.boards,
            Some("snapshot") => self.snapshots,
            Some("touch") => self.touch,
            _ => false,
        }
    }
}

/// A stepper as people read it: "stepper 5 (z2in, Z in, string 2)".
pub fn stepper_label(ev: &Value) -> String {
    let mut parts = Vec::new();
    for k in ["name", "role"] {
        if let Some(s) = ev[k].as_str() {
            parts.push(s.to_string());
        }
    }
    if parts.is_empty() {
        format!("stepper {}", scalar(&ev["stepper"]))
    } else {
        format!("stepper {} ({})", scalar(&ev["stepper"]), parts.join(", "))
    }
}

pub use crate::ops::progress::offset_words;

/// An operation's step (`phase` `step`) as one line.
pub fn step_line(ev: &Value) -> String {
    let n = |k: &str| scalar(&ev[k]);
    let what = match ev["doing"].as_str().unwrap_or("") {
        "descending" => format!("descending, at {}", n("at")),
        "touched" => format!(
            "touched its string at {}: {}",
            n("at"),
            offset_words(ev["offset"].as_i64().unwrap_or(0))
        ),
        "unreachable" => "reached 0 without touching its string: disabled".into(),
        "lifting" => format!("touching at {}, lifting", n("at")),
        "lifted" => format!("lifted clear at {}", n("at")),
        "still_touching" => format!("still touching at {}: disabled", n("at")),
        "adjusting" => format!(
            "channel {} {}: moving {:+}",
            n("channel"),
            n("verdict").replace('_', " "),
            ev["delta"].as_i64().unwrap_or(0)
        ),
        "at_limit" => format!("channel {}: at its limit, skipped", n("channel")),
        "searching" => format!(
            "searching the {} switch, at {} after {} moves",
            n("end"),
            n("at"),
            n("moves")
        ),
        "switch_found" => format!(
            "{} switch pressed after {} moves; counter set to {}",
            n("end"),
            n("moves"),
            n("at")
        ),
        "moving_back" => format!("moving back to {}", n("to")),
        other => other.replace('_', " "),
    };
    let mut line = format!("{}: {} {what}", n("kind"), stepper_label(ev));
    if let (Some(done), Some(of)) = (ev["done"].as_u64(), ev["of"].as_u64()) {
        line.push_str(&format!("; {done} of {of} done"));
    }
    line
}

/// A sweep's pass (`phase` `progress`) as one line.
pub fn sweep_line(ev: &Value) -> String {
    let deltas: Vec<String> = ev["deltas"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| format!("{:.1}", d.as_f64().unwrap_or(f64::NAN)))
        .collect();
    let clean = match ev["clean"].as_bool() {
        Some(true) => "clean",
        Some(false) => "not clean",
        None => "no pass",
    };
    let mut line = format!(
        "{} X {} (position {}/{}) pass {}: {clean}, clean run {}/{}, z variance {}, deltas {}",
        scalar(&ev["kind"]),
        scalar(&ev["x"]),
        scalar(&ev["position"]),
        scalar(&ev["positions"]),
        scalar(&ev["pass"]),
        scalar(&ev["clean_run"]),
        scalar(&ev["adjustment_level"]),
        scalar(&ev["z_variance"]),
        deltas.join(", "),
    );
    let skipped: Vec<String> = ev["skipped"]
        .as_array()
        .into_iter()
        .flatten()
        .map(scalar)
        .collect();
    if !skipped.is_empty() {
        line.push_str(&format!(", skipped channels {}", skipped.join(", ")));
    }
    line.push_str(&format!(
        ", calibrations {}; next: {}",
        scalar(&ev["calibrations"]),
        scalar(&ev["next"]).replace('_', " ")
    ));
    if let Some(r) = ev["reason"].as_str() {
        line.push_str(&format!(" ({r})"));
    }
    line
}

/// Any event as one line (None: an event this client does not know).
pub fn event_line(ev: &Value) -> Option<String> {
    Some(match ev["event"].as_str()? {
        "operation" => match ev["phase"].as_str() {
            Some("progress") => sweep_line(ev),
            Some("step") => step_line(ev),
            Some("run_ended") => format!(
                "operation {} run {} {}: {}",
                scalar(&ev["kind"]),
                scalar(&ev["run"]),
                scalar(&ev["outcome"]["status"]),
                scalar(&ev["outcome"]["message"])
            ),
            Some("ended") => format!(
                "operation {} ended: {} {}",
                scalar(&ev["kind"]),
                ev["outcome"]["status"]
                    .as_str()
                    .unwrap_or(ev["outcome"]["error"]["kind"].as_str().unwrap_or("")),
                ev["outcome"]["message"]
                    .as_str()
                    .or(ev["outcome"]["error"]["message"].as_str())
                    .unwrap_or("")
            )
            .trim_end()
            .to_string(),
            _ => format!("operation {} {}", scalar(&ev["kind"]), scalar(&ev["phase"])),
        },
        "board" => {
            let now = if ev["initial"] == true { " (now)" } else { "" };
            format!(
                "board {}: {}{now}",
                scalar(&ev["board"]),
                scalar(&ev["detail"])
            )
        }
        "snapshot" => {
            let s = &ev["status"];
            let mut line = format!(
                "snapshots: {} timer, {} event",
                scalar(&s["timer"]),
                scalar(&s["events"])
            );
            if let Some(why) = s["unknown"].as_str() {
                line.push_str(&format!("; paused: {why}"));
            }
            line
        }
        "touch" => {
            let state = match (ev["touching"].as_bool(), ev["error"].as_str()) {
                (_, Some(e)) => format!("cannot be read: {e}"),
                (Some(true), None) => "touching".into(),
                (Some(false), None) => "clear".into(),
                (None, None) => "unknown".into(),
            };
            let now = if ev["initial"] == true { " (now)" } else { "" };
            format!("sensor of stepper {}: {state}{now}", scalar(&ev["stepper"]))
        }
        _ => return None,
    })
}

/// An event as a line while waiting for an operation: as [`event_line`],
/// but an operation's end without its message (the outcome, printed next,
/// has it).
pub fn wait_line(ev: &Value) -> Option<String> {
    if ev["event"] == "operation" && ev["phase"] == "ended" {
        return Some(format!(
            "operation {} ended: {}",
            scalar(&ev["kind"]),
            scalar(&ev["outcome"]["status"])
        ));
    }
    event_line(ev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn step(extra: Value) -> Value {
        let mut ev = json!({"v": 1, "event": "operation", "phase": "step", "kind": "z_calibrate",
                            "stepper": 5, "name": "z2in", "role": "Z in, string 2"});
        for (k, v) in extra.as_object().expect("object") {
            ev[k] = v.clone();
        }
        ev
    }

    #[test]
    fn a_descent_names_its_stepper_and_counts() {
        let ev = step(json!({"doing": "descending", "at": 14, "done": 3, "of": 12}));
        assert_eq!(
            event_line(&ev).expect("line"),
            "z_calibrate: stepper 5 (z2in, Z in, string 2) descending, at 14; 3 of 12 done"
        );
    }

    #[test]
    fn a_contact_says_how_far_the_counter_was_off_in_words() {
        let ev = step(json!({"doing": "touched", "at": 30, "offset": 10, "done": 4, "of": 12}));
        assert_eq!(
            step_line(&ev),
            "z_calibrate: stepper 5 (z2in, Z in, string 2) touched its string at 30: counter was 10 steps high, corrected; 4 of 12 done"
        );
        assert_eq!(offset_words(-1), "counter was 1 step low, corrected");
        assert_eq!(offset_words(0), "counter was right");
    }

    #[test]
    fn bump_check_x_homing_and_z_adjust_steps_read_as_words() {
        let ev = json!({"event": "operation", "phase": "step", "kind": "bump_check", "stepper": 3,
                        "name": "z1in", "role": "Z in, string 1", "doing": "lifted", "at": 6,
                        "done": null, "of": null});
        assert_eq!(
            step_line(&ev),
            "bump_check: stepper 3 (z1in, Z in, string 1) lifted clear at 6"
        );
        let ev = json!({"event": "operation", "phase": "step", "kind": "x_home", "stepper": 0,
                        "name": "x", "role": "X", "doing": "searching", "end": "home", "at": 2396, "moves": 10});
        assert_eq!(
            step_line(&ev),
            "x_home: stepper 0 (x, X) searching the home switch, at 2396 after 10 moves"
        );
        let ev = json!({"event": "operation", "phase": "step", "kind": "z_adjust", "stepper": 4,
                        "name": "z1out", "role": "Z out, string 1", "doing": "adjusting",
                        "channel": 1, "delta": -2, "verdict": "too_far", "done": 1, "of": 6});
        assert_eq!(
            step_line(&ev),
            "z_adjust: stepper 4 (z1out, Z out, string 1) channel 1 too far: moving -2; 1 of 6 done"
        );
    }

    #[test]
    fn a_wait_shows_operations_and_real_link_changes_only() {
        let initial = json!({"event": "board", "board": "carriage", "link": "connected",
                             "detail": "connected", "initial": true});
        let change = json!({"event": "board", "board": "carriage", "link": "disconnected",
                            "detail": "disconnected (gone)", "initial": false});
        let snap =
            json!({"event": "snapshot", "status": {"timer": 3, "events": 1}, "initial": false});
        assert!(!Filter::WAIT.passes(&initial));
        assert!(Filter::WAIT.passes(&change));
        assert!(!Filter::WAIT.passes(&snap));
        assert!(Filter::WAIT.passes(&step(json!({"doing": "unreachable"}))));
        // `events`: snapshots only when asked for; a filter keeps its kinds only.
        let all = Filter::events(false, false, false, false);
        assert!(all.passes(&initial) && !all.passes(&snap));
        let snaps = Filter::events(false, false, true, false);
        assert!(snaps.passes(&snap) && !snaps.passes(&change));
        assert_eq!(
            event_line(&initial).expect("line"),
            "board carriage: connected (now)"
        );
        assert_eq!(
            event_line(&snap).expect("line"),
            "snapshots: 3 timer, 1 event"
        );
        let ended = json!({"event": "operation", "phase": "ended", "kind": "bump_check",
                           "outcome": {"status": "completed", "message": "no stepper was touching its string"}});
        assert_eq!(
            event_line(&ended).expect("line"),
            "operation bump_check ended: completed no stepper was touching its string"
        );
        assert_eq!(
            wait_line(&ended).expect("line"),
            "operation bump_check ended: completed"
        );
    }

    #[test]
    fn a_sweep_pass_keeps_its_line() {
        let ev = json!({"event": "operation", "phase": "progress", "kind": "sweep_left_right",
                        "x": 100, "position": 1, "positions": 3, "pass": 1, "clean": false,
                        "clean_run": 0, "adjustment_level": 2, "z_variance": 0,
                        "deltas": [0.0, 1.5], "skipped": [1], "calibrations": 0,
                        "next": "step_x", "reason": null});
        assert_eq!(
            event_line(&ev).expect("line"),
            "sweep_left_right X 100 (position 1/3) pass 1: not clean, clean run 0/2, z variance 0, deltas 0.0, 1.5, skipped channels 1, calibrations 0; next: step x"
        );
    }
}
