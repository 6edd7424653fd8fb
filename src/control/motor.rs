//! The `motor` and `motor_set` commands: the motor parameters in force, what
//! each board holds, and run-time changes through the motion gate.

use serde_json::{json, Value};

use super::handlers::{gate_error, Shared};
use super::protocol::{ApiError, Request};
use crate::config::{MotorParam, MotorTarget};
use crate::motion::{GateError, Origin};

/// What each board was last given (`null` until sent since its last
/// connect or reset) and how many full sets it took since start.
pub(super) fn boards_motor(sh: &Shared) -> Vec<Value> {
    sh.parts
        .boards
        .iter()
        .map(|b| {
            let s = b.status();
            json!({
                "name": s.name,
                "sends": s.motor_sends,
                "holds": s.motor.as_ref().map(|m| json!({
                    "writes": m.writes,
                    "at": m.at,
                    "batches": m.batches,
                    "max_bytes_in_flight": m.max_bytes_in_flight,
                    "took_s": m.took.as_secs_f64(),
                })),
            })
        })
        .collect()
}

/// `motor`: the parameters in force and what every board holds.
pub(super) fn show(sh: &Shared) -> Result<Value, ApiError> {
    let params = sh.parts.gate.motor().ok_or_else(|| {
        ApiError::new(
            "refused",
            "motor parameters are not available on this daemon",
        )
    })?;
    Ok(json!({"params": params, "boards": boards_motor(sh)}))
}

/// `motor_set`: `target` (x, z, tuners or a stepper number), `param`
/// (speed, accel, min, max), `value`.
pub(super) async fn set(sh: &Shared, req: &Request) -> Result<Value, ApiError> {
    let target: MotorTarget = match req.args.get("target") {
        Some(Value::String(s)) => s
            .parse()
            .map_err(|e: String| ApiError::new("bad_request", e))?,
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(MotorTarget::Stepper)
            .ok_or_else(|| {
                ApiError::bad_field(
                    "target",
                    "x, z, tuners or a stepper number",
                    req.args.get("target"),
                )
            })?,
        other => {
            return Err(ApiError::bad_field(
                "target",
                "x, z, tuners or a stepper number",
                other,
            ))
        }
    };
    let param: MotorParam = req
        .str("param")?
        .parse()
        .map_err(|e: String| ApiError::new("bad_request", e))?;
    let value = match req.args.get("value") {
        Some(v) => v
            .as_i64()
            .ok_or_else(|| ApiError::bad_field("value", "an integer", Some(v)))?,
        None => return Err(ApiError::bad_field("value", "an integer", None)),
    };
    let result = sh
        .parts
        .gate
        .set_motor(&Origin::Manual, target, param, value)
        .await;
    // The boards hold the new value unless it was refused before sending.
    let taken = matches!(&result, Ok(_) | Err(GateError::Board(_)));
    if taken {
        let state = sh.parts.state.clone();
        let key = crate::state::motor_key(target, param);
        let saved = tokio::task::spawn_blocking(move || state.save_motor(&key, value))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        if let Err(e) = saved {
            return Err(ApiError::new(
                "not_persisted",
                format!(
                    "motor {target} {} applied but not saved (it will not survive a restart): {e}",
                    param.name()
                ),
            ));
        }
    }
    let params = result.map_err(gate_error)?;
    Ok(json!({"params": params, "boards": boards_motor(sh)}))
}
