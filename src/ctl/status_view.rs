//! `stringdriverctl status` for people: a short summary first (capturing,
//! or the one reason it is not), then the steppers and the channels, every
//! line within 80 columns.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::fmt::{ago, scalar, since, size, span, yes_no};

/// The width every line fits in.
pub const WIDTH: usize = 80;

/// Most characters of the last operation's message shown: two lines at a
/// glance (a z_calibrate names all its steppers; `status --json` and
/// `op wait` have it whole).
const LAST_MESSAGE: usize = 120;

/// `text` cut to `max` characters at a word, marked with " …" when cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let cut: String = text.chars().take(max).collect();
    let cut = cut.rfind(' ').map_or(cut.as_str(), |i| &cut[..i]);
    format!("{} …", cut.trim_end_matches([',', ';', ':']))
}

/// Whether the daemon captures rows now (`status --check` exits 0 only then).
pub fn capturing(status: &Value) -> bool {
    status["health"]["capturing"].as_bool() == Some(true)
}

/// The whole readable status of `status` (the `status` reply) at `now`.
pub fn render(status: &Value, now: DateTime<Utc>) -> String {
    let mut out = Vec::new();
    summary(status, now, &mut out);
    out.push(String::new());
    steppers(status, &mut out);
    out.push(String::new());
    channels(status, &mut out);
    let mut text = String::new();
    for line in out {
        for l in wrap(line.trim_end(), WIDTH) {
            text.push_str(&l);
            text.push('\n');
        }
    }
    text
}

/// Breaks `line` at spaces so that no piece is wider than `width`; the
/// continuation lines are indented by two spaces.
fn wrap(line: &str, width: usize) -> Vec<String> {
    if line.chars().count() <= width {
        return vec![line.to_string()];
    }
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in line.split(' ') {
        let extra = if cur.is_empty() { 0 } else { 1 };
        if !cur.is_empty() && cur.chars().count() + extra + word.chars().count() > width {
            lines.push(std::mem::take(&mut cur));
            cur.push_str("  ");
        } else if extra == 1 {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.trim().is_empty() {
        lines.push(cur);
    }
    lines
}

fn summary(s: &Value, now: DateTime<Utc>, out: &mut Vec<String>) {
    let d = &s["daemon"];
    out.push(format!(
        "stringdriverd {} (protocol {}) on {}",
        scalar(&d["version"]),
        scalar(&d["protocol"]),
        scalar(&d["host"])
    ));
    let snaps = &s["snapshots"];
    if capturing(s) {
        out.push(format!(
            "capturing: last row {} ({} timer, {} event)",
            ago(&snaps["last_at"], now).unwrap_or_else(|| "not yet".into()),
            scalar(&snaps["timer"]),
            scalar(&snaps["events"])
        ));
    } else {
        out.push(format!(
            "PAUSED, no rows are written: {}",
            s["health"]["reason"].as_str().unwrap_or("unknown")
        ));
    }
    let op = &s["operation"];
    let running = match op["running"].as_str() {
        Some(kind) => match since(&op["running_since"], now) {
            Some(t) => format!("{kind} running for {}", span(t)),
            None => format!("{kind} running"),
        },
        None => "none running".to_string(),
    };
    let running = if op["repeat"].as_bool() == Some(true) {
        format!("{running} (repeat, run {})", scalar(&op["run"]))
    } else {
        running
    };
    let running = match op["running_id"].as_str() {
        Some(id) if op["running"].is_string() => format!("{running}, id {id}"),
        _ => running,
    };
    let last = &op["last"];
    let last = if last.is_null() {
        String::new()
    } else {
        format!(
            "; last: {} {}{}{}",
            scalar(&last["kind"]),
            scalar(&last["status"]),
            ago(&op["last_ended_at"], now)
                .map(|a| format!(" {a}"))
                .unwrap_or_default(),
            match last["message"]
                .as_str()
                .or(last["error"]["message"].as_str())
            {
                Some(m) if !m.is_empty() => format!(": {}", clip(m, LAST_MESSAGE)),
                _ => String::new(),
            }
        )
    };
    out.push(format!("operation: {running}{last}"));
    let boards: Vec<String> = s["boards"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            let mut t = format!("{} {}", scalar(&b["name"]), scalar(&b["link"]));
            if let Some(n) = b["resets"].as_u64().filter(|n| *n > 0) {
                t.push_str(&format!(" ({n} resets seen)"));
            }
            if let Some(m) = b["moving"].as_object() {
                t.push_str(&format!(
                    " (stepper {} moving to {})",
                    scalar(&m["stepper"]),
                    scalar(&m["target"])
                ));
            }
            t
        })
        .collect();
    out.push(format!("boards: {}", boards.join(", ")));
    let f = &s["feed"];
    out.push(format!(
        "feed: {}{}",
        scalar(&f["detail"]),
        ago(&f["frame_changed_at"], now)
            .map(|a| format!(", last new frame {a}"))
            .unwrap_or_default()
    ));
    let sp = &s["spool"];
    let sh = &s["shipper"];
    let mut storage = format!(
        "storage: spool backlog {}",
        sp["backlog"].as_u64().unwrap_or(0)
    );
    if let (Some(used), Some(limit)) = (sp["used_bytes"].as_u64(), sp["limit_bytes"].as_u64()) {
        storage.push_str(&format!(" ({} of {})", size(used), size(limit)));
    }
    if let Some(n) = sp["dead_letters"].as_u64().filter(|n| *n > 0) {
        storage.push_str(&format!(", {n} dead letters"));
    }
    if sh["connected"].as_bool() == Some(true) {
        storage.push_str(&format!(
            "; database connected, {} shipped",
            scalar(&sh["shipped"])
        ));
    } else {
        storage.push_str("; database not connected");
        if let Some(e) = sh["last_error"].as_str() {
            storage.push_str(&format!(": {e}"));
        }
    }
    out.push(storage);
}

/// The stepper table alone (`stringdriverctl steppers`), from a reply
/// with a `steppers` list (`steppers` or `status`).
pub fn stepper_table(reply: &Value) -> String {
    let mut out = Vec::new();
    steppers(reply, &mut out);
    out.iter().map(|l| format!("{l}\n")).collect()
}

fn steppers(s: &Value, out: &mut Vec<String>) {
    out.push(format!(
        "{:>3} {:<7} {:<16} {:<11} {:>7} {:<3} {:<3} {:<5} limits",
        "#", "name", "role", "board:n", "pos", "ok", "on", "touch"
    ));
    for st in s["steppers"].as_array().into_iter().flatten() {
        let board = match (st["board"].as_str(), st["board_index"].as_u64()) {
            (Some(b), Some(i)) => format!("{b}:{i}"),
            _ => "-".into(),
        };
        out.push(format!(
            "{:>3} {:<7} {:<16} {:<11} {:>7} {:<3} {:<3} {:<5} {} to {}",
            scalar(&st["index"]),
            scalar(&st["name"]),
            scalar(&st["role"]),
            board,
            scalar(&st["position"]),
            yes_no(&st["trusted"]),
            yes_no(&st["enabled"]),
            yes_no(&st["touching"]),
            scalar(&st["min"]),
            scalar(&st["max"]),
        ));
    }
    out.push("(ok: counter trusted; on: enabled; touch: touch sensor)".into());
}

fn channels(s: &Value, out: &mut Vec<String>) {
    let f = &s["feed"];
    let set = &s["settings"];
    let (Some(vc), Some(amp)) = (f["voice_count"].as_array(), f["amp_sum"].as_array()) else {
        out.push("channels: no audmon values".into());
        return;
    };
    out.push(format!(
        "{:<8} {:>6} {:<9} {:>8} {:<11}",
        "channel", "voices", "(range)", "amp_sum", "(range)"
    ));
    let at = |k: &str, c: usize| set[k].get(c).and_then(Value::as_i64);
    for c in 0..vc.len().min(amp.len()) {
        let v = vc[c].as_i64();
        let a = amp[c].as_f64();
        let range = |lo: Option<i64>, hi: Option<i64>| match (lo, hi) {
            (Some(lo), Some(hi)) => format!("({lo}-{hi})"),
            _ => "-".into(),
        };
        let judge = |x: Option<f64>, lo: Option<i64>, hi: Option<i64>| match (x, lo, hi) {
            (Some(x), Some(lo), _) if x < lo as f64 => "low",
            (Some(x), _, Some(hi)) if x > hi as f64 => "high",
            (Some(_), Some(_), Some(_)) => "",
            _ => "?",
        };
        let vmin = at("voice_count_min", c);
        let vmax = at("voice_count_max", c);
        let amin = at("amp_sum_min", c);
        let amax = at("amp_sum_max", c);
        let notes: Vec<String> = [
            ("voices", judge(v.map(|v| v as f64), vmin, vmax)),
            ("amp_sum", judge(a, amin, amax)),
        ]
        .iter()
        .filter(|(_, j)| !j.is_empty())
        .map(|(what, j)| format!("{what} {j}"))
        .collect();
        out.push(format!(
            "{:<8} {:>6} {:<9} {:>8} {:<11} {}",
            c,
            v.map_or("-".into(), |v| v.to_string()),
            range(vmin, vmax),
            a.map_or("-".into(), |a| format!("{a:.1}")),
            range(amin, amax),
            if notes.is_empty() {
                "in range".to_string()
            } else {
                notes.join(", ")
            }
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample(capturing: bool) -> Value {
        let steppers: Vec<Value> = (0..19)
            .map(|g| {
                json!({
                    "index": g, "name": format!("z{g}out"), "role": "Z out, string 11",
                    "board": "carriage", "board_index": 12, "min": -100000, "max": 100000,
                    "position": -99999, "trusted": true, "enabled": false, "touching": null,
                })
            })
            .collect();
        json!({
            "daemon": {"version": "0.1.0", "protocol": 1, "host": "stringdriver-2"},
            "health": {
                "capturing": capturing,
                "reason": (!capturing).then_some(
                    "counter of stepper 0 (x, X) on board carriage is untrusted (the board reset, \
                     or it was never set): set it (stringdriverctl set-position) or calibrate"),
            },
            "steppers": steppers,
            "boards": [{"name": "carriage", "link": "connected", "resets": 2},
                       {"name": "tuner", "link": "waiting-for-reset", "resets": 0}],
            "feed": {"detail": "ok", "voice_count": [6, 1], "amp_sum": [50.123456789, 300.5],
                     "frame_changed_at": "2026-12-04T05:00:00Z"},
            "settings": {"voice_count_min": [2, 2], "voice_count_max": [12, 12],
                         "amp_sum_min": [20, 20], "amp_sum_max": [250, 250]},
            "spool": {"backlog": 3, "used_bytes": 12800, "limit_bytes": 1073741824u64},
            "shipper": {"connected": true, "shipped": 1234},
            "operation": {"running": "z_calibrate", "running_since": "2026-12-04T04:59:48Z",
                          "running_id": "01feff6a-db9f-4d89-8886-6b83d5a93cd6",
                          "last": {"kind": "bump_check", "status": "completed", "message": "lifted [3]"},
                          "last_ended_at": "2026-12-04T04:59:40Z"},
            "snapshots": {"timer": 100, "events": 4, "last_at": "2026-12-04T04:59:59.700Z"},
        })
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-04T05:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn status_fits_80_columns_and_leads_with_the_one_reason() {
        for capturing in [true, false] {
            let text = render(&sample(capturing), now());
            for l in text.lines() {
                assert!(l.chars().count() <= WIDTH, "{} columns: {l}", l.len());
            }
            let second = text.lines().nth(1).unwrap_or_default();
            if capturing {
                assert_eq!(second, "capturing: last row 0.3 s ago (100 timer, 4 event)");
            } else {
                assert!(second.starts_with("PAUSED, no rows are written: counter of stepper 0"));
            }
            // Wrapped lines read as one.
            let joined = text.replace("\n  ", " ");
            assert!(
                joined.contains(
                    "operation: z_calibrate running for 12 s, id \
                     01feff6a-db9f-4d89-8886-6b83d5a93cd6; last: bump_check completed 20 s ago: \
                     lifted [3]"
                ),
                "{text}"
            );
            assert!(joined.contains("storage: spool backlog 3 (12.5 KiB of 1.0 GiB); database connected, 1234 shipped"), "{text}");
            assert!(
                text.contains(
                    "boards: carriage connected (2 resets seen), tuner waiting-for-reset"
                ),
                "{text}"
            );
            // amp_sum to one decimal against its thresholds.
            assert!(
                text.lines()
                    .any(|l| l.starts_with("0 ") && l.contains("50.1") && l.ends_with("in range")),
                "{text}"
            );
            assert!(
                text.lines()
                    .any(|l| l.starts_with("1 ") && l.contains("voices low, amp_sum high")),
                "{text}"
            );
            assert!(!text.contains("50.123"), "{text}");
        }
    }

    #[test]
    fn a_long_last_message_is_clipped_at_a_word() {
        let m = "1 (z0in): counter was right; ".repeat(12);
        let c = clip(m.trim_end(), LAST_MESSAGE);
        assert!(c.chars().count() <= LAST_MESSAGE + 2, "{c}");
        assert!(
            c.ends_with(" …") && m.starts_with(c.trim_end_matches(" …")),
            "{c}"
        );
        assert_eq!(clip("short", LAST_MESSAGE), "short");
    }

    #[test]
    fn a_long_word_is_never_lost_by_wrapping() {
        let line = format!("{} end", "x".repeat(90));
        let w = wrap(&line, 80);
        assert_eq!(w.concat().replace(' ', ""), line.replace(' ', ""));
    }
}
