//! z_adjust: move each string's Z pair by the audio analysis.

use super::{Machine, OpError};
use crate::motion::OperationTicket;
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

/// Which of the pair (in, out) to move, given their counters and enables:
/// too close → the one nearest the string (lower counter), too far → the
/// farthest (higher counter); ties alternate by channel parity; disabled
/// steppers are never chosen.
pub fn choose(
    verdict: Verdict,
    channel: usize,
    pair: (usize, usize),
    counters: (i32, i32),
    enabled: (bool, bool),
) -> Option<usize> {
    let (a, b) = pair;
    match enabled {
        (false, false) => return None,
        (true, false) => return (verdict != Verdict::InRange).then_some(a),
        (false, true) => return (verdict != Verdict::InRange).then_some(b),
        (true, true) => {}
    }
    let tie = if channel % 2 == 0 { a } else { b };
    match verdict {
        Verdict::InRange => None,
        Verdict::TooClose => Some(match counters.0.cmp(&counters.1) {
            std::cmp::Ordering::Less => a,
            std::cmp::Ordering::Greater => b,
            std::cmp::Ordering::Equal => tie,
        }),
        Verdict::TooFar => Some(match counters.0.cmp(&counters.1) {
            std::cmp::Ordering::Greater => a,
            std::cmp::Ordering::Less => b,
            std::cmp::Ordering::Equal => tie,
        }),
    }
}

/// `skip`: channels left alone this time (a sweep's "still settling" ones).
pub(super) async fn run(
    m: &Machine,
    t: &OperationTicket,
    skip: &[usize],
) -> Result<String, OpError> {
    m.run_recorded(t, OperationType::BumpCheck, None).await?;
    let mut moved = Vec::new();
    for c in 0..m.layout.strings() {
        if skip.contains(&c) {
            moved.push(format!("channel {c}: skipped (still settling)"));
            continue;
        }
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
        m.gate.move_rel(&t.origin(), z, step).await?;
        moved.push(format!("channel {c}: stepper {z} {step:+}"));
        t.rest(std::time::Duration::from_secs_f64(
            s.operations.lap_rest.max(0.0),
        ))
        .await?;
    }
    m.run_recorded(t, OperationType::BumpCheck, None).await?;
    Ok(if moved.is_empty() {
        "every channel in range".into()
    } else {
        moved.join("; ")
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
