//! The sweeps, `sweep_left_right` and `sweep_right_left`: the lab's
//! automatic mode (operations.md, "Sweeps"). The carriage steps along the
//! strings from x_start to x_finish (or back) by x_step; at each X position
//! the machine runs passes — a z_adjust that leaves the still-settling
//! channels alone, then one more bump_check — until `adjustment_level`
//! clean passes in a row, then steps on. Too many passes at one position
//! (`retry_threshold`) or a sound that jumped (`z_variance_threshold`) calls
//! for a full z_calibrate.
//!
//! The decisions are a pure state machine, [`SweepState`], fed one
//! observation per pass; [`run`] does the I/O around it: moves through the
//! gate, nested operations recorded as their own rows, a
//! [`SweepProgress`] after every pass. Bounds the older tools lack: X is
//! read live from the board's counter (their sweeps never ended), and a
//! sweep fails with a clear message after `operations.sweep_max_passes`
//! passes at one position or when it would need more than
//! `operations.sweep_max_calibrations` calibrations.

use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

use super::progress::Progress;
use super::{Machine, OpError, Outcome};
use crate::config::{OperationSettings, Thresholds};
use crate::motion::{GateError, OperationTicket};
use crate::store::{OperationStatus, OperationType};

/// The settings a sweep decides with, read again before every pass (an
/// operator may change them while it runs).
#[derive(Debug, Clone, PartialEq)]
pub struct SweepLimits {
    /// Clean passes in a row before X steps on.
    pub adjustment_level: u32,
    /// Passes at one X position (since the last step or calibration) before
    /// a full z_calibrate.
    pub retry_threshold: u32,
    /// A channel whose amp_sum moved more than this since the previous
    /// pass is still settling: this pass's z_adjust leaves it alone.
    pub delta_threshold: f32,
    /// Summed voice_count change since the previous pass above which a full
    /// z_calibrate runs.
    pub z_variance_threshold: i64,
    /// Passes at one X position, calibrations notwithstanding, after which
    /// the sweep fails.
    pub max_passes: u32,
    /// Calibrations in one sweep beyond which it fails.
    pub max_calibrations: u32,
}

impl SweepLimits {
    /// The limits of these settings (validated by the configuration and
    /// `state::apply`; a negative value counts as 0).
    pub fn of(o: &OperationSettings) -> SweepLimits {
        let u = |v: i32| u32::try_from(v).unwrap_or(0);
        SweepLimits {
            adjustment_level: u(o.adjustment_level),
            retry_threshold: u(o.retry_threshold),
            delta_threshold: o.delta_threshold as f32,
            z_variance_threshold: i64::from(o.z_variance_threshold),
            max_passes: u(o.sweep_max_passes),
            max_calibrations: u(o.sweep_max_calibrations),
        }
    }
}

/// The audio analysis at one moment: per channel voice_count and amp_sum.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Per channel: partials sounding.
    pub voice_count: Vec<i32>,
    /// Per channel: sum of their amplitudes.
    pub amp_sum: Vec<f32>,
}

/// What is known before a pass: the change since the previous one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PassPlan {
    /// Per channel |amp_sum now - amp_sum at the end of the previous pass|
    /// (0 on the first pass and after a calibration).
    pub deltas: Vec<f32>,
    /// Channels whose delta exceeds delta_threshold: left alone by this
    /// pass's z_adjust.
    pub skip: Vec<usize>,
    /// Sum over channels of |voice_count now - at the previous pass|.
    pub z_variance: i64,
}

/// What to do before a pass.
#[derive(Debug, Clone, PartialEq)]
pub enum Before {
    /// Run the pass with this plan.
    Pass(PassPlan),
    /// Run a full z_calibrate instead (counters and remembered values are
    /// already reset), then plan again at this X.
    Calibrate {
        /// The plan that called for it.
        plan: PassPlan,
        /// Why, in words.
        reason: String,
    },
    /// Give up: a bound was reached.
    Fail(String),
}

/// What a pass came to.
#[derive(Debug, Clone, PartialEq)]
pub struct PassResult {
    /// Whether the pass was clean.
    pub clean: bool,
    /// Its number at this X (since the last step or calibration).
    pub pass: u32,
    /// Clean passes in a row, this one included.
    pub clean_run: u32,
    /// What comes next.
    pub next: After,
}

/// What to do after a pass.
#[derive(Debug, Clone, PartialEq)]
pub enum After {
    /// Another pass at this X.
    Again,
    /// The clean run reached adjustment_level: this X position is done.
    Advance,
    /// Run a full z_calibrate (counters and remembered values are already
    /// reset), then go on at this X.
    Calibrate(String),
    /// Give up: a bound was reached.
    Fail(String),
}

/// The pass logic of a sweep, free of I/O: fed what each pass observed, it
/// says what comes next.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepState {
    limits: SweepLimits,
    /// The reading at the end of the previous pass; `None` at the start and
    /// after a calibration. Kept across an X step: the first pass at a new
    /// position compares with the last one at the previous position.
    remembered: Option<Reading>,
    /// Passes since the last X step or calibration.
    passes: u32,
    /// Passes at this X position, calibrations notwithstanding.
    passes_here: u32,
    clean_run: u32,
    calibrations: u32,
    total_passes: u32,
}

impl SweepState {
    /// A sweep about to start.
    pub fn new(limits: SweepLimits) -> SweepState {
        SweepState {
            limits,
            remembered: None,
            passes: 0,
            passes_here: 0,
            clean_run: 0,
            calibrations: 0,
            total_passes: 0,
        }
    }

    /// Takes settings changed while the sweep runs.
    pub fn set_limits(&mut self, limits: SweepLimits) {
        self.limits = limits;
    }

    /// The limits in force.
    pub fn limits(&self) -> &SweepLimits {
        &self.limits
    }

    /// Passes since the last X step or calibration (the pass number).
    pub fn passes(&self) -> u32 {
        self.passes
    }

    /// Clean passes in a row.
    pub fn clean_run(&self) -> u32 {
        self.clean_run
    }

    /// Calibrations run so far.
    pub fn calibrations(&self) -> u32 {
        self.calibrations
    }

    /// Passes run so far in the whole sweep.
    pub fn total_passes(&self) -> u32 {
        self.total_passes
    }

    /// Before a pass, with the reading now: the deltas, the channels to
    /// skip and the z variance, and whether a calibration or a bound comes
    /// first.
    pub fn before_pass(&mut self, now: &Reading) -> Before {
        if self.passes_here >= self.limits.max_passes {
            return Before::Fail(format!(
                "{} passes at this X position without {} clean passes in a row \
                 (operations.sweep_max_passes = {})",
                self.passes_here, self.limits.adjustment_level, self.limits.max_passes
            ));
        }
        let plan = self.plan(now);
        if plan.z_variance > self.limits.z_variance_threshold {
            let reason = format!(
                "z variance {} > z_variance_threshold {}",
                plan.z_variance, self.limits.z_variance_threshold
            );
            return match self.calibrate(reason) {
                Ok(reason) => Before::Calibrate { plan, reason },
                Err(why) => Before::Fail(why),
            };
        }
        Before::Pass(plan)
    }

    /// After a pass, with the reading at its end and whether its bump_check
    /// found anything touching: was it clean, and what next.
    pub fn after_pass(
        &mut self,
        end: &Reading,
        found_touching: bool,
        thresholds: &Thresholds,
    ) -> PassResult {
        self.passes += 1;
        self.passes_here += 1;
        self.total_passes += 1;
        let clean = !found_touching && in_range(end, thresholds);
        self.clean_run = if clean { self.clean_run + 1 } else { 0 };
        self.remembered = Some(end.clone());
        let (pass, clean_run) = (self.passes, self.clean_run);
        let next = if self.clean_run >= self.limits.adjustment_level {
            After::Advance
        } else if self.passes >= self.limits.retry_threshold {
            match self.calibrate(format!(
                "{} passes at this X position reached retry_threshold {}",
                self.passes, self.limits.retry_threshold
            )) {
                Ok(reason) => After::Calibrate(reason),
                Err(why) => After::Fail(why),
            }
        } else {
            After::Again
        };
        PassResult {
            clean,
            pass,
            clean_run,
            next,
        }
    }

    /// X stepped on: the pass counters start again (the remembered reading
    /// stays, so the first pass there sees what the step changed).
    pub fn moved_on(&mut self) {
        self.passes = 0;
        self.passes_here = 0;
        self.clean_run = 0;
    }

    fn plan(&self, now: &Reading) -> PassPlan {
        let Some(prev) = &self.remembered else {
            return PassPlan {
                deltas: vec![0.0; now.amp_sum.len()],
                skip: Vec::new(),
                z_variance: 0,
            };
        };
        let deltas: Vec<f32> = now
            .amp_sum
            .iter()
            .enumerate()
            .map(|(c, a)| prev.amp_sum.get(c).map_or(0.0, |p| (a - p).abs()))
            .collect();
        let skip = deltas
            .iter()
            .enumerate()
            .filter(|(_, d)| **d > self.limits.delta_threshold)
            .map(|(c, _)| c)
            .collect();
        let z_variance = now
            .voice_count
            .iter()
            .zip(&prev.voice_count)
            .map(|(a, b)| (i64::from(*a) - i64::from(*b)).abs())
            .sum();
        PassPlan {
            deltas,
            skip,
            z_variance,
        }
    }

    /// A calibration is called for: counted and the counters and the
    /// remembered reading reset, or the bound says no.
    fn calibrate(&mut self, reason: String) -> Result<String, String> {
        if self.calibrations >= self.limits.max_calibrations {
            return Err(format!(
                "a full z_calibrate is needed ({reason}) but this sweep has already run {} \
                 (operations.sweep_max_calibrations = {}): the sound does not come into range",
                self.calibrations, self.limits.max_calibrations
            ));
        }
        self.calibrations += 1;
        self.passes = 0;
        self.clean_run = 0;
        self.remembered = None;
        Ok(reason)
    }
}

/// Every channel's amp_sum in [amp_sum_min, amp_sum_max] and voice_count in
/// [voice_count_min, voice_count_max]; a channel without thresholds or
/// values is not in range.
pub fn in_range(r: &Reading, th: &Thresholds) -> bool {
    let channels = th.voice_count_min.len();
    r.voice_count.len() >= channels
        && r.amp_sum.len() >= channels
        && (0..channels).all(|c| {
            let (v, a) = (r.voice_count[c], r.amp_sum[c]);
            (th.voice_count_min[c]..=th.voice_count_max[c]).contains(&v)
                && a >= th.amp_sum_min[c] as f32
                && a <= th.amp_sum_max[c] as f32
        })
}

/// What the sweep does next, in a progress report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Next {
    /// Another pass at this X.
    Pass,
    /// X steps on by x_step.
    StepX,
    /// A full z_calibrate, then passes at this X again.
    Calibrate,
    /// x_finish is done: the sweep ends.
    Done,
    /// A bound was reached: the sweep fails.
    Fail,
}

/// A sweep's progress, published after every pass (and when a calibration
/// is called for before one).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepProgress {
    /// The sweep's `operations` row.
    pub operation_id: Uuid,
    /// sweep_left_right or sweep_right_left.
    pub kind: OperationType,
    /// The X counter, read from the board.
    pub x: i32,
    /// Which X position this is (1 = the start).
    pub position: u32,
    /// X positions in the whole sweep.
    pub positions: u32,
    /// Passes at this X since the last step or calibration.
    pub pass: u32,
    /// Whether the pass was clean (`None`: no pass ran, a calibration was
    /// called for before it).
    pub clean: Option<bool>,
    /// Clean passes in a row.
    pub clean_run: u32,
    /// Clean passes in a row needed to step on.
    pub adjustment_level: u32,
    /// Per channel amp_sum change before the pass.
    pub deltas: Vec<f32>,
    /// Channels the pass's z_adjust left alone.
    pub skipped: Vec<usize>,
    /// Summed voice_count change before the pass.
    pub z_variance: i64,
    /// Calibrations so far in this sweep.
    pub calibrations: u32,
    /// What comes next.
    pub next: Next,
    /// Why a calibration or a failure comes next.
    pub reason: Option<String>,
}

/// The X range and direction of a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The X stepper (global index).
    pub stepper: usize,
    /// First X position.
    pub from: i32,
    /// Last X position.
    pub to: i32,
    /// x_step (>= 1).
    pub step: i32,
}

impl Route {
    /// The route of `kind` with these settings; `None` for another kind.
    pub fn of(kind: OperationType, stepper: usize, o: &OperationSettings) -> Option<Route> {
        let (from, to) = match kind {
            OperationType::SweepLeftRight => (o.x_start, o.x_finish),
            OperationType::SweepRightLeft => (o.x_finish, o.x_start),
            _ => return None,
        };
        Some(Route {
            stepper,
            from,
            to,
            step: o.x_step.max(1),
        })
    }

    /// The next X position after `x`, toward `to`, never past it.
    pub fn next(&self, x: i32) -> i32 {
        if self.to >= x {
            x.saturating_add(self.step).min(self.to)
        } else {
            x.saturating_sub(self.step).max(self.to)
        }
    }

    /// How many X positions the sweep visits (x_finish included even when
    /// the range is not a multiple of x_step).
    pub fn positions(&self) -> u32 {
        let span = (i64::from(self.to) - i64::from(self.from)).unsigned_abs();
        let step = u64::from(self.step.unsigned_abs().max(1));
        u32::try_from(span.div_ceil(step) + 1).unwrap_or(u32::MAX)
    }
}

/// Checks before a sweep starts (refused with no row when one fails): an X
/// with travel, x_start and x_finish inside it, X enabled with a trusted
/// counter on a connected board, every enabled Z stepper's board connected,
/// and the audmon feed usable.
pub(super) fn preconditions(m: &Machine, kind: OperationType) -> Result<(), OpError> {
    let refuse = |why: String| OpError::Precondition(format!("{} refused: {why}", kind.as_str()));
    let Some(x) = m.layout.x().map(|x| x.first) else {
        return Err(refuse(
            "this machine has no X stepper (layout.x_index): there is nothing to sweep".into(),
        ));
    };
    let (lo, hi) = m.layout.limits(x);
    if hi <= 0 || hi <= lo {
        return Err(refuse(format!(
            "the X stepper's travel is {lo} to {hi} (X max {hi}: a placeholder X): \
             there is no carriage travel to sweep"
        )));
    }
    let s = m.settings();
    for (name, v) in [
        ("x_start", s.operations.x_start),
        ("x_finish", s.operations.x_finish),
    ] {
        if !(lo..=hi).contains(&v) {
            return Err(refuse(format!(
                "{name} {v} lies outside the X stepper's travel {lo} to {hi}"
            )));
        }
    }
    if !s.enabled.get(x).copied().unwrap_or(false) {
        return Err(refuse(format!("the X stepper {x} is disabled")));
    }
    // The Z counters and the feed are checked by `preconditions::check`;
    // X must also be trusted: a sweep's positions are absolute.
    m.gate
        .known_counter(x, true)
        .map_err(|e| refuse(format!("X: {e}")))?;
    Ok(())
}

/// The feed now, for `strings` channels; a clear error otherwise.
fn reading(m: &Machine) -> Result<Reading, OpError> {
    super::preconditions::feed_reading(m)
        .map_err(|why| OpError::Sweep(format!("the sweep stopped: {why}")))
}

/// A nested operation's outcome as a result: a cancelled one cancels the
/// sweep (never swallowed), a failed one fails it.
fn nested(kind: OperationType, o: Outcome) -> Result<Outcome, OpError> {
    match o.status {
        OperationStatus::Completed => Ok(o),
        OperationStatus::Cancelled => Err(OpError::Gate(GateError::Cancelled)),
        OperationStatus::Failed | OperationStatus::Started => Err(OpError::Sweep(format!(
            "its {} {} ({}): {}",
            kind.as_str(),
            o.status.as_str(),
            o.operation_id,
            o.message
        ))),
    }
}

/// The cancel takes effect here too, not only at the next move: no nested
/// operation starts after it.
fn check_cancel(t: &OperationTicket) -> Result<(), OpError> {
    if t.cancelled().is_cancelled() {
        return Err(OpError::Gate(
            t.interrupted()
                .map_or(GateError::Cancelled, GateError::Interrupted),
        ));
    }
    Ok(())
}

/// What the sweep did, for its message.
struct Summary {
    route: Route,
    positions_done: u32,
    x: Option<i32>,
}

impl Summary {
    fn text(&self, state: &SweepState) -> String {
        let r = &self.route;
        format!(
            "X (stepper {}) {} to {} in steps of {}: {} of {} positions done{}, {} passes, {} calibrations",
            r.stepper,
            r.from,
            r.to,
            r.step,
            self.positions_done,
            r.positions(),
            self.x.map(|x| format!(", X at {x}")).unwrap_or_default(),
            state.total_passes(),
            state.calibrations()
        )
    }
}

/// Runs the sweep `kind` under the ticket of its own row `operation_id`.
pub(super) async fn run(
    m: &Machine,
    t: &OperationTicket,
    kind: OperationType,
    operation_id: Uuid,
) -> Result<String, OpError> {
    let x = m
        .layout
        .x()
        .map(|x| x.first)
        .ok_or_else(|| OpError::Precondition(format!("{}: no X stepper", kind.as_str())))?;
    let settings = m.settings();
    let route = Route::of(kind, x, &settings.operations)
        .ok_or_else(|| OpError::Precondition(format!("{} is not a sweep", kind.as_str())))?;
    let mut state = SweepState::new(SweepLimits::of(&settings.operations));
    let mut summary = Summary {
        route,
        positions_done: 0,
        x: None,
    };
    let result = sweep(m, t, kind, operation_id, &mut state, &mut summary).await;
    match result {
        Ok(()) => Ok(summary.text(&state)),
        Err(OpError::Sweep(why)) => Err(OpError::Sweep(format!(
            "{} failed{}: {why} ({})",
            kind.as_str(),
            summary.x.map(|x| format!(" at X {x}")).unwrap_or_default(),
            summary.text(&state)
        ))),
        Err(e) => Err(e),
    }
}

async fn x_move(m: &Machine, t: &OperationTicket, x: usize, to: i32) -> Result<i32, OpError> {
    check_cancel(t)?;
    m.gate.move_abs(&t.origin(), x, to).await?;
    // operations.md: rest x_rest after an X move, before anything listens
    // to the strings at the new position.
    let rest = m.settings().operations.x_rest.max(0.0);
    t.rest(Duration::from_secs_f64(rest)).await?;
    // Read live from the board: the position the sweep stands at is what
    // the counter says, not what was asked for.
    let here = m.gate.known_counter(x, false)?;
    if here != to {
        return Err(OpError::Sweep(format!(
            "X (stepper {x}) reads {here} after a move to {to}"
        )));
    }
    Ok(here)
}

async fn sweep(
    m: &Machine,
    t: &OperationTicket,
    kind: OperationType,
    operation_id: Uuid,
    state: &mut SweepState,
    summary: &mut Summary,
) -> Result<(), OpError> {
    let route = summary.route;
    let positions = route.positions();
    let mut here = x_move(m, t, route.stepper, route.from).await?;
    summary.x = Some(here);
    // Bounded by the route's positions; each position by the state's
    // sweep_max_passes and sweep_max_calibrations.
    for position in 1..=positions {
        loop {
            check_cancel(t)?;
            let s = m.settings();
            state.set_limits(SweepLimits::of(&s.operations));
            let progress =
                |state: &SweepState, plan: &PassPlan, pass: u32, clean_run: u32| SweepProgress {
                    operation_id,
                    kind,
                    x: here,
                    position,
                    positions,
                    pass,
                    clean: None,
                    clean_run,
                    adjustment_level: state.limits().adjustment_level,
                    deltas: plan.deltas.clone(),
                    skipped: plan.skip.clone(),
                    z_variance: plan.z_variance,
                    calibrations: state.calibrations(),
                    next: Next::Pass,
                    reason: None,
                };
            let now = reading(m)?;
            let (passes, run) = (state.passes(), state.clean_run());
            let plan = match state.before_pass(&now) {
                Before::Fail(why) => return Err(OpError::Sweep(why)),
                Before::Calibrate { plan, reason } => {
                    let _ = m.progress.send(Progress::Sweep(SweepProgress {
                        next: Next::Calibrate,
                        reason: Some(reason),
                        ..progress(state, &plan, passes, run)
                    }));
                    calibrate(m, t).await?;
                    continue;
                }
                Before::Pass(plan) => plan,
            };
            nested(
                OperationType::ZAdjust,
                m.run_recorded_skipping(t, OperationType::ZAdjust, None, &plan.skip)
                    .await?,
            )?;
            check_cancel(t)?;
            let bump = nested(
                OperationType::BumpCheck,
                m.run_recorded_skipping(t, OperationType::BumpCheck, None, &[])
                    .await?,
            )?;
            let end = reading(m)?;
            let done = state.after_pass(&end, !bump.touching.is_empty(), &m.settings().thresholds);
            let (next, reason) = match &done.next {
                After::Again => (Next::Pass, None),
                After::Advance if here == route.to => (Next::Done, None),
                After::Advance => (Next::StepX, None),
                After::Calibrate(r) => (Next::Calibrate, Some(r.clone())),
                After::Fail(r) => (Next::Fail, Some(r.clone())),
            };
            let _ = m.progress.send(Progress::Sweep(SweepProgress {
                clean: Some(done.clean),
                next,
                reason,
                ..progress(state, &plan, done.pass, done.clean_run)
            }));
            match done.next {
                After::Again => {}
                After::Advance => break,
                After::Calibrate(_) => calibrate(m, t).await?,
                After::Fail(why) => return Err(OpError::Sweep(why)),
            }
        }
        summary.positions_done = position;
        if here == route.to {
            return Ok(());
        }
        here = x_move(m, t, route.stepper, route.next(here)).await?;
        summary.x = Some(here);
        state.moved_on();
    }
    Err(OpError::Sweep(format!(
        "X did not reach {} within the sweep's {positions} positions",
        route.to
    )))
}

async fn calibrate(m: &Machine, t: &OperationTicket) -> Result<(), OpError> {
    check_cancel(t)?;
    nested(
        OperationType::ZCalibrate,
        m.run_recorded_skipping(t, OperationType::ZCalibrate, None, &[])
            .await?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SweepLimits {
        SweepLimits {
            adjustment_level: 3,
            retry_threshold: 5,
            delta_threshold: 50.0,
            z_variance_threshold: 10,
            max_passes: 12,
            max_calibrations: 2,
        }
    }

    fn th() -> Thresholds {
        Thresholds {
            voice_count_min: vec![2, 2],
            voice_count_max: vec![12, 12],
            amp_sum_min: vec![20, 20],
            amp_sum_max: vec![250, 250],
        }
    }

    fn r(voices: [i32; 2], amps: [f32; 2]) -> Reading {
        Reading {
            voice_count: voices.to_vec(),
            amp_sum: amps.to_vec(),
        }
    }

    const GOOD: ([i32; 2], [f32; 2]) = ([6, 6], [100.0, 100.0]);

    fn next(p: PassResult) -> (bool, After) {
        (p.clean, p.next)
    }

    fn pass(s: &mut SweepState, now: &Reading) -> PassPlan {
        match s.before_pass(now) {
            Before::Pass(p) => p,
            other => panic!("expected a pass, got {other:?}"),
        }
    }

    #[test]
    fn deltas_are_zero_on_the_first_pass_and_settling_channels_are_skipped() {
        let mut s = SweepState::new(limits());
        let p = pass(&mut s, &r([6, 6], [100.0, 100.0]));
        assert_eq!(p.deltas, vec![0.0, 0.0]);
        assert!(p.skip.is_empty());
        assert_eq!(p.z_variance, 0);
        s.after_pass(&r([6, 6], [100.0, 100.0]), false, &th());
        // Channel 1 moved 60 (> 50) since the end of the previous pass, channel 0 exactly 50.
        let p = pass(&mut s, &r([7, 4], [150.0, 40.0]));
        assert_eq!(p.deltas, vec![50.0, 60.0]);
        assert_eq!(p.skip, vec![1], "only a delta above the threshold skips");
        assert_eq!(p.z_variance, 1 + 2);
    }

    #[test]
    fn clean_passes_in_a_row_step_x_and_an_unclean_one_resets_the_run() {
        let mut s = SweepState::new(limits());
        let good = r(GOOD.0, GOOD.1);
        for _ in 0..2 {
            pass(&mut s, &good);
            assert_eq!(
                next(s.after_pass(&good, false, &th())),
                (true, After::Again)
            );
        }
        assert_eq!(s.clean_run(), 2);
        // Touching found by the pass's bump_check: unclean even with good sound.
        pass(&mut s, &good);
        assert_eq!(
            next(s.after_pass(&good, true, &th())),
            (false, After::Again)
        );
        assert_eq!(s.clean_run(), 0);
        // Sound out of range (voice_count above its max): unclean.
        pass(&mut s, &good);
        let loud = r([13, 6], [100.0, 100.0]);
        assert!(!s.after_pass(&loud, false, &th()).clean);
        // An amp_sum at its bounds is in range.
        let edges = r([2, 12], [20.0, 250.0]);
        assert!(in_range(&edges, &th()));
        assert!(!in_range(&r([2, 12], [19.9, 250.0]), &th()));
        // Passes so far 4; retry_threshold 5: the fifth pass calibrates
        // unless it is the last of a clean run.
        s.set_limits(SweepLimits {
            retry_threshold: 100,
            ..limits()
        });
        for k in 1..=3 {
            pass(&mut s, &good);
            let want = if k == 3 { After::Advance } else { After::Again };
            assert_eq!(next(s.after_pass(&good, false, &th())), (true, want));
        }
        s.moved_on();
        assert_eq!((s.passes(), s.clean_run()), (0, 0));
        assert_eq!(s.total_passes(), 7);
        // The remembered reading survives the X step: the first pass at the
        // new position sees the change.
        let p = pass(&mut s, &r([6, 6], [170.0, 100.0]));
        assert_eq!(p.skip, vec![0]);
    }

    #[test]
    fn retry_threshold_calls_for_a_calibration_that_resets_counters_and_remembered_values() {
        let mut s = SweepState::new(limits());
        let bad = r([1, 6], [100.0, 100.0]);
        for _ in 0..4 {
            pass(&mut s, &bad);
            assert_eq!(s.after_pass(&bad, false, &th()).next, After::Again);
        }
        pass(&mut s, &bad);
        let PassResult { clean, next, .. } = s.after_pass(&bad, false, &th());
        assert!(!clean);
        assert!(
            matches!(&next, After::Calibrate(r) if r.contains("retry_threshold 5")),
            "{next:?}"
        );
        assert_eq!((s.passes(), s.clean_run(), s.calibrations()), (0, 0, 1));
        // Remembered values forgotten: deltas 0 again.
        let p = pass(&mut s, &r([12, 1], [400.0, 0.0]));
        assert_eq!(p.deltas, vec![0.0, 0.0]);
        assert_eq!(p.z_variance, 0);
    }

    #[test]
    fn a_z_variance_above_its_threshold_calibrates_before_the_pass() {
        let mut s = SweepState::new(limits());
        pass(&mut s, &r([6, 6], [100.0, 100.0]));
        s.after_pass(&r([6, 6], [100.0, 100.0]), false, &th());
        // 5 + 5 = 10: not above 10.
        let p = pass(&mut s, &r([11, 1], [100.0, 100.0]));
        assert_eq!(p.z_variance, 10);
        s.after_pass(&r([6, 6], [100.0, 100.0]), false, &th());
        match s.before_pass(&r([12, 1], [100.0, 100.0])) {
            Before::Calibrate { plan, reason } => {
                assert_eq!(plan.z_variance, 11);
                assert!(reason.contains("z variance 11 > z_variance_threshold 10"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.calibrations(), 1);
        assert_eq!(pass(&mut s, &r([12, 1], [100.0, 100.0])).z_variance, 0);
    }

    #[test]
    fn the_bounds_fail_the_sweep() {
        // Calibrations: the third one needed is refused.
        let mut s = SweepState::new(SweepLimits {
            retry_threshold: 1,
            ..limits()
        });
        let bad = r([1, 6], [100.0, 100.0]);
        for _ in 0..2 {
            pass(&mut s, &bad);
            assert!(matches!(
                s.after_pass(&bad, false, &th()).next,
                After::Calibrate(_)
            ));
        }
        pass(&mut s, &bad);
        match s.after_pass(&bad, false, &th()).next {
            After::Fail(why) => {
                assert!(
                    why.contains("operations.sweep_max_calibrations = 2"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        // Passes per X position, calibrations notwithstanding.
        let mut s = SweepState::new(SweepLimits {
            max_calibrations: 100,
            ..limits()
        });
        for _ in 0..12 {
            pass(&mut s, &bad);
            s.after_pass(&bad, false, &th());
        }
        assert_eq!(s.calibrations(), 2, "retry_threshold 5: after 5 and 10");
        match s.before_pass(&bad) {
            Before::Fail(why) => assert!(why.contains("sweep_max_passes = 12"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Stepping on starts the count again.
        s.moved_on();
        pass(&mut s, &bad);
    }

    #[test]
    fn routes_end_on_x_finish_whatever_the_step() {
        let o = OperationSettings {
            x_start: 100,
            x_finish: 125,
            x_step: 10,
            ..OperationSettings::default()
        };
        let lr = Route::of(OperationType::SweepLeftRight, 0, &o).expect("a sweep");
        assert_eq!(lr.positions(), 4);
        assert_eq!((lr.next(100), lr.next(120)), (110, 125));
        let rl = Route::of(OperationType::SweepRightLeft, 0, &o).expect("a sweep");
        assert_eq!((rl.from, rl.to, rl.positions()), (125, 100, 4));
        assert_eq!((rl.next(125), rl.next(105)), (115, 100));
        let one = Route {
            from: 50,
            to: 50,
            ..lr
        };
        assert_eq!(one.positions(), 1);
        assert_eq!(Route::of(OperationType::ZAdjust, 0, &o), None);
    }
}
