//! Small formatters for people: sizes in KiB/MiB/GiB, times as "0.3 s ago",
//! booleans as yes/no, JSON scalars without quotes.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// A byte count in B, KiB, MiB or GiB, one decimal above bytes.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A span of seconds for people: "0.3 s", "42 s", "5 min", "3 h", "2 d".
pub fn span(secs: f64) -> String {
    let s = secs.max(0.0);
    if s < 10.0 {
        format!("{s:.1} s")
    } else if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else if s < 172_800.0 {
        format!("{:.0} h", s / 3600.0)
    } else {
        format!("{:.0} d", s / 86_400.0)
    }
}

/// An RFC 3339 time in `v` as "0.3 s ago" relative to `now`; `None` when
/// `v` holds no time.
pub fn ago(v: &Value, now: DateTime<Utc>) -> Option<String> {
    let t = DateTime::parse_from_rfc3339(v.as_str()?).ok()?;
    let secs = (now - t.with_timezone(&Utc)).num_milliseconds() as f64 / 1000.0;
    Some(format!("{} ago", span(secs)))
}

/// Seconds from the RFC 3339 time in `v` to `now`.
pub fn since(v: &Value, now: DateTime<Utc>) -> Option<f64> {
    let t = DateTime::parse_from_rfc3339(v.as_str()?).ok()?;
    Some((now - t.with_timezone(&Utc)).num_milliseconds() as f64 / 1000.0)
}

/// `yes`, `no`, or `-` when unknown.
pub fn yes_no(v: &Value) -> &'static str {
    match v.as_bool() {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    }
}

/// A JSON scalar as text: strings without quotes, null as `-`.
pub fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes_and_spans_read_like_a_person_writes_them() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(12 * 1024 + 512), "12.5 KiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
        assert_eq!(span(0.31), "0.3 s");
        assert_eq!(span(42.4), "42 s");
        assert_eq!(span(600.0), "10 min");
        assert_eq!(span(3.0 * 86_400.0), "3 d");
        let now = DateTime::parse_from_rfc3339("2026-12-04T05:00:01.300Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            ago(&json!("2026-12-04T05:00:01Z"), now).as_deref(),
            Some("0.3 s ago")
        );
        assert_eq!(ago(&json!(null), now), None);
    }
}
