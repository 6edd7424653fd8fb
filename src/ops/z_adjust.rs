//! z_adjust: move each string's Z pair by the audio analysis.

use super::progress::Doing;
use super::{Machine, OpError};
use crate::motion::{GateError, OperationTicket};
use crate::store::OperationType;

/// What a channel's analysis says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Move away from the string.
    TooClose,
    /// Move toward the string.
    TooFar,
    /// Leave it.
    InRange,
}

/// operations.md: voice_count decides when voice_count and amp_sum disagree.
pub fn judge(voices: i32, amp: f32, vmin: i32, vmax: i32, amin: i32, amax: i32) -> Verdict {
    if voices > vmax || (amp > amax as f32 && voices >= vmin) {
        Verdict::TooClose
    } else if voices < vmin || (amp < amin as f32 && voices <= vmax) {
        Verdict::TooFar
    } else {
        Verdict::InRange
    }
}

/// Which of the pair (in, out) to move, given their counters and enables
/// (operations.md): too close → the one nearest the string (lower counter),
/// on a tie "in" on even channels and "out" on odd ones; too far → the
/// farthest (higher counter), on a tie "out" on even channels and "in" on
/// odd ones; if one of the pair is disabled, the other; disabled steppers
/// are never chosen.
pub fn choose(
    verdict: Verdict,
    channel: usize,
    pair: (usize, usize),
    counters: (i32, i32),
    enabled: (bool, bool),
) -> Option<usize> {
    let (zin, zout) = pair;
    if verdict == Verdict::InRange {
        return None;
    }
    match enabled {
        (false, false) => return None,
        (true, false) => return Some(zin),
        (false, true) => return Some(zout),
        (true, true) => {}
    }
    let even = channel % 2 == 0;
    match (verdict, counters.0.cmp(&counters.1)) {
        (Verdict::TooClose, std::cmp::Ordering::Less) => Some(zin),
        (Verdict::TooClose, std::cmp::Ordering::Greater) => Some(zout),
        (Verdict::TooClose, std::cmp::Ordering::Equal) => Some(if even { zin } else { zout }),
        (_, std::cmp::Ordering::Greater) => Some(zin),
        (_, std::cmp::Ordering::Less) => Some(zout),
        (_, std::cmp::Ordering::Equal) => Some(if even { zout } else { zin }),
    }
}

/// z_adjust over every channel but those in `skip` (string indices): a
/// sweep leaves channels still settling alone this way (operations.md,
/// "delta_threshold"). Runs bump_check first and last (each its own row,
/// under `t`); each channel's voice_count and amp_sum are read fresh when
/// its turn comes, after the moves and rests before it. A chosen move that
/// would leave the stepper's limits is reported "at its limit" and skipped;
/// the other channels and the final bump_check go on. After a move: rest
/// z_rest (the gate's record of the move's end), then lap_rest.
pub(super) async fn run(
    m: &Machine,
    t: &OperationTicket,
    skip: &[usize],
) -> Result<String, OpError> {
    m.nested(t, OperationType::BumpCheck, None, &[]).await?;
    let mut report = Vec::new();
    for c in 0..m.layout.strings() {
        t.check()?;
        if skip.contains(&c) {
            report.push(format!("channel {c}: skipped (still settling)"));
            continue;
        }
        // Fresh, now: the bump_check and the moves before may have changed the sound.
        let feed = m.feed.borrow().clone();
        let values = feed
            .usable_at(chrono::Utc::now())
            .map_err(OpError::Feed)?
            .clone();
        let (Some(&vc), Some(&amp)) = (values.voice_count.get(c), values.amp_sum.get(c)) else {
            return Err(OpError::Feed(format!("no channel {c}")));
        };
        let s = m.settings();
        let th = &s.thresholds;
        let verdict = judge(
            vc,
            amp,
            th.voice_count_min[c],
            th.voice_count_max[c],
            th.amp_sum_min[c],
            th.amp_sum_max[c],
        );
        let pair = m.layout.z_pair(c);
        let enabled = |g: usize| s.enabled.get(g).copied().unwrap_or(false);
        let chosen = choose(
            verdict,
            c,
            pair,
            (m.counter(pair.0), m.counter(pair.1)),
            (enabled(pair.0), enabled(pair.1)),
        );
        let Some(z) = chosen else { continue };
        let step = match verdict {
            Verdict::TooClose => s.operations.z_up_step,
            _ => s.operations.z_down_step,
        };
        let (min, max) = m.layout.limits(z);
        let from = m.counter(z);
        let target = from as i64 + step as i64;
        if target < min as i64 || target > max as i64 {
            m.step(
                OperationType::ZAdjust,
                z,
                Doing::AtLimit { channel: c },
                Some((c + 1, m.layout.strings())),
            );
            report.push(format!(
                "channel {c}: stepper {z} at its limit ({from}{step:+} outside {min} to {max}), skipped"
            ));
            continue;
        }
        m.step(
            OperationType::ZAdjust,
            z,
            Doing::Adjusting {
                channel: c,
                delta: step,
                verdict: if verdict == Verdict::TooClose {
                    "too_close"
                } else {
                    "too_far"
                },
            },
            Some((c, m.layout.strings())),
        );
        match m.gate.move_rel(&t.origin(), z, step).await {
            Ok(_) => {}
            // The gate's own limit check (the counter moved meanwhile): the same.
            Err(GateError::OutOfLimits { .. }) => {
                report.push(format!("channel {c}: stepper {z} at its limit, skipped"));
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        report.push(format!("channel {c}: stepper {z} {step:+}"));
        // z_rest first (the mechanism settles), then lap_rest (the sound does).
        m.gate.settle(&t.origin(), z).await?;
        t.rest(std::time::Duration::from_secs_f64(
            s.operations.lap_rest.max(0.0),
        ))
        .await?;
    }
    m.nested(t, OperationType::BumpCheck, None, &[]).await?;
    Ok(if report.is_empty() {
        "every channel in range".into()
    } else {
        report.join("; ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voice_count_decides_when_the_two_disagree() {
        // thresholds: voices 0..=12, amp 20..=100
        assert_eq!(judge(13, 50.0, 0, 12, 20, 100), Verdict::TooClose);
        assert_eq!(judge(5, 150.0, 0, 12, 20, 100), Verdict::TooClose);
        assert_eq!(judge(3, 10.0, 4, 12, 20, 100), Verdict::TooFar);
        assert_eq!(judge(5, 10.0, 0, 12, 20, 100), Verdict::TooFar);
        assert_eq!(judge(5, 50.0, 0, 12, 20, 100), Verdict::InRange);
        // too many voices but quiet: voice_count decides (too close)
        assert_eq!(judge(13, 10.0, 0, 12, 20, 100), Verdict::TooClose);
        // too few voices but loud: voice_count decides (too far)
        assert_eq!(judge(2, 150.0, 4, 12, 20, 100), Verdict::TooFar);
    }

    #[test]
    fn the_right_stepper_of_the_pair_moves() {
        let p = (1, 2);
        assert_eq!(
            choose(Verdict::TooClose, 0, p, (5, 9), (true, true)),
            Some(1)
        );
        assert_eq!(
            choose(Verdict::TooClose, 0, p, (9, 5), (true, true)),
            Some(2)
        );
        assert_eq!(choose(Verdict::TooFar, 0, p, (5, 9), (true, true)), Some(2));
        assert_eq!(choose(Verdict::TooFar, 0, p, (9, 5), (true, true)), Some(1));
        assert_eq!(
            choose(Verdict::TooClose, 0, p, (5, 5), (true, true)),
            Some(1)
        );
        assert_eq!(
            choose(Verdict::TooClose, 1, p, (5, 5), (true, true)),
            Some(2)
        );
        // Ties (operations.md): too close "in" on even channels, "out" on
        // odd; too far "out" on even channels, "in" on odd.
        assert_eq!(choose(Verdict::TooFar, 0, p, (5, 5), (true, true)), Some(2));
        assert_eq!(choose(Verdict::TooFar, 1, p, (5, 5), (true, true)), Some(1));
        assert_eq!(choose(Verdict::TooFar, 2, p, (7, 7), (true, true)), Some(2));
        assert_eq!(
            choose(Verdict::TooClose, 3, p, (7, 7), (true, true)),
            Some(2)
        );
        // A disabled side in a tie: the other one, whatever the parity.
        assert_eq!(
            choose(Verdict::TooFar, 0, p, (5, 5), (true, false)),
            Some(1)
        );
        assert_eq!(
            choose(Verdict::TooClose, 1, p, (5, 5), (true, false)),
            Some(1)
        );
        assert_eq!(choose(Verdict::InRange, 0, p, (5, 5), (true, false)), None);
        assert_eq!(
            choose(Verdict::TooClose, 0, p, (5, 9), (false, true)),
            Some(2)
        );
        assert_eq!(
            choose(Verdict::TooFar, 0, p, (5, 9), (true, false)),
            Some(1)
        );
        assert_eq!(choose(Verdict::TooFar, 0, p, (5, 9), (false, false)), None);
        assert_eq!(choose(Verdict::InRange, 0, p, (5, 9), (true, true)), None);
    }
}
