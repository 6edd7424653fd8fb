//! `/api/meta`: what the page builds its controls from — the operation
//! kinds and the run-time settings, taken from the library's own lists
//! ([`OperationType::ALL`], [`SETTING_INFO`]), so that a kind or a setting
//! added to the daemon appears on the page without a page of its own.

use serde_json::{json, Value};

use crate::state::{SettingInfo, SETTING_INFO};
use crate::store::OperationType;

/// Whether an operation kind takes a `stepper` argument.
pub fn stepper_use(kind: OperationType) -> &'static str {
    // Exhaustive on purpose: a new kind does not compile until it says.
    match kind {
        OperationType::BumpCheck | OperationType::ZCalibrate => "optional",
        OperationType::ZAdjust
        | OperationType::SweepLeftRight
        | OperationType::SweepRightLeft
        | OperationType::XHome
        | OperationType::XAway
        | OperationType::XCalibrate => "none",
    }
}

/// One line about an operation kind, for the page's tooltip.
pub fn about(kind: OperationType) -> &'static str {
    match kind {
        OperationType::BumpCheck => "lift every touching Z stepper just clear of its string",
        OperationType::ZCalibrate => "find each Z stepper's contact point",
        OperationType::ZAdjust => "move the Z steppers by the audio analysis",
        OperationType::SweepLeftRight => {
            "automatic mode: X from x_start to x_finish, adjusting at each position"
        }
        OperationType::SweepRightLeft => {
            "automatic mode: X from x_finish to x_start, adjusting at each position"
        }
        OperationType::XHome => "find the X home switch and make the X counter 0 there",
        OperationType::XAway => "find the X away switch and make the X counter X max there",
        OperationType::XCalibrate => {
            "find the nearer X switch, set the counter there, and move back"
        }
    }
}

/// A setting as the page shows it: `unit` and `range` split from the
/// library's "unit, range" text; `per_channel` for the threshold lists.
pub fn setting(s: &SettingInfo) -> Value {
    let (unit, range) = match s.unit.split_once(", ") {
        Some((u, r)) if !r.starts_with("or ") => (u, r),
        _ => (s.unit, ""),
    };
    json!({
        "name": s.name,
        "unit": unit,
        "range": range,
        "about": s.description,
        "per_channel": s.unit.contains("per channel"),
    })
}

/// The whole `/api/meta` document.
pub fn meta(auth_required: bool) -> Value {
    let kinds: Vec<Value> = OperationType::ALL
        .iter()
        .map(|k| json!({"name": k.as_str(), "stepper": stepper_use(*k), "about": about(*k)}))
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": crate::control::protocol::VERSION,
        "kinds": kinds,
        "settings": SETTING_INFO.iter().map(setting).collect::<Vec<_>>(),
        "commands": allowed_commands(),
        "auth": {"required": auth_required},
    })
}

/// The control commands a browser may send through `/api/call`: all of
/// them but `events`, which `/api/events` serves.
pub fn allowed_commands() -> Vec<&'static str> {
    crate::control::protocol::COMMANDS
        .iter()
        .copied()
        .filter(|c| *c != "events")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_and_setting_is_listed() {
        let m = meta(false);
        assert_eq!(
            m["kinds"].as_array().map(Vec::len),
            Some(OperationType::ALL.len())
        );
        assert_eq!(
            m["settings"].as_array().map(Vec::len),
            Some(SETTING_INFO.len())
        );
        let z = &m["settings"].as_array().expect("list")[1];
        assert_eq!(
            (z["name"].as_str(), z["unit"].as_str(), z["range"].as_str()),
            (Some("z_up_step"), Some("steps"), Some("> 0"))
        );
        assert!(!allowed_commands().contains(&"events"));
    }
}
