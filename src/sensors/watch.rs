//! The touch states outside operations, for the control `status` and the
//! `events` stream: every Z sensor read at most once a period (a second in
//! the daemon), never while an operation runs (the operation reads them
//! itself, at its own pace), published on a watch channel that wakes its
//! receivers only when a state changed. The X limit switches, where there
//! are some, are read with them (in `status`, so that their wiring can be
//! checked by pressing one by hand).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{TouchSensors, XEnd};
use crate::config::{Layout, XSwitchWiring};

/// How often the daemon reads the sensors outside operations.
pub const WATCH_PERIOD: Duration = Duration::from_secs(1);

/// One Z sensor's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TouchState {
    /// Global stepper index of the Z stepper.
    pub stepper: usize,
    /// Whether it touches; `None` when it could not be read.
    pub touching: Option<bool>,
    /// Why it could not be read.
    pub error: Option<String>,
}

/// One X limit switch's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct XSwitchReading {
    /// "home", "away", or "both" for one switch at both ends.
    pub end: &'static str,
    /// Whether it is pressed; `None` when it could not be read.
    pub pressed: Option<bool>,
    /// Why it could not be read.
    pub error: Option<String>,
}

/// Every Z sensor's state at one reading.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct TouchStates {
    /// When they were read; `None` before the first reading.
    pub read_at: Option<DateTime<Utc>>,
    /// One per Z stepper, in global index order.
    pub sensors: Vec<TouchState>,
    /// The X limit switches: home then away, one for both ends, or none.
    pub x_switches: Vec<XSwitchReading>,
}

/// Reads every X limit switch once (none without switches).
pub fn read_x_switches(sensors: &dyn TouchSensors) -> Vec<XSwitchReading> {
    let ends: &[(&'static str, XEnd)] = match sensors.x_switch_wiring() {
        XSwitchWiring::None => &[],
        XSwitchWiring::Two => &[("home", XEnd::Home), ("away", XEnd::Away)],
        XSwitchWiring::One => &[("both", XEnd::Home)],
    };
    ends.iter()
        .map(|&(name, end)| match sensors.x_switch(end) {
            Ok(p) => XSwitchReading {
                end: name,
                pressed: Some(p),
                error: None,
            },
            Err(e) => XSwitchReading {
                end: name,
                pressed: None,
                error: Some(e.to_string()),
            },
        })
        .collect()
}

/// Reads every Z stepper's sensor once.
pub fn read_all(sensors: &dyn TouchSensors, layout: &Layout) -> Vec<TouchState> {
    layout
        .z()
        .indices()
        .map(|stepper| match sensors.read(stepper) {
            Ok(t) => TouchState {
                stepper,
                touching: Some(t),
                error: None,
            },
            Err(e) => TouchState {
                stepper,
                touching: None,
                error: Some(e.to_string()),
            },
        })
        .collect()
}

/// Starts the task that reads the sensors every `period` while `busy()` is
/// false (no operation runs) and publishes [`TouchStates`]; a change of
/// `read_at` alone does not wake receivers. Reads run on the blocking pool
/// (a simulated sensor is a socket round trip). Runs until `shutdown` or
/// until every receiver is gone.
pub fn spawn(
    sensors: Arc<dyn TouchSensors>,
    layout: Arc<Layout>,
    busy: Arc<dyn Fn() -> bool + Send + Sync>,
    period: Duration,
    shutdown: CancellationToken,
) -> (watch::Receiver<TouchStates>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(TouchStates::default());
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(period.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if tx.is_closed() {
                return;
            }
            if busy() {
                continue;
            }
            let (s, l) = (sensors.clone(), layout.clone());
            let Ok((states, switches)) = tokio::task::spawn_blocking(move || {
                (read_all(s.as_ref(), &l), read_x_switches(s.as_ref()))
            })
            .await
            else {
                continue;
            };
            for now in &states {
                let was = tx
                    .borrow()
                    .sensors
                    .iter()
                    .find(|w| w.stepper == now.stepper)
                    .cloned();
                if was.as_ref() != Some(now) {
                    tracing::debug!(stepper = now.stepper, touching = ?now.touching, error = ?now.error, "touch sensor changed");
                }
            }
            tx.send_if_modified(|current| {
                let changed = current.sensors != states || current.x_switches != switches;
                *current = TouchStates {
                    read_at: Some(Utc::now()),
                    sensors: states,
                    x_switches: switches,
                };
                changed
            });
        }
    });
    (rx, task)
}
