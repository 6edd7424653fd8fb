//! The touch states outside operations (`sensors::watch`): read at most once
//! a period, never while an operation runs, published only when a state
//! changes. The sensors are switches a test sets and whose reads it counts;
//! the clock is tokio's paused one.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stringdriverd::config::{self, Config, Layout};
use stringdriverd::sensors::{self, SensorError, TouchSensors, TouchState};
use tokio_util::sync::CancellationToken;

/// Two strings: Z steppers 1..=4 on a 13-stepper v2 board.
fn config() -> Config {
    let text = "host = \"t\"\n[[boards]]\nname = \"c\"\nport = \"/dev/x\"\nint_bytes = 2\n\
                firmware = \"v2\"\nsteppers = 13\n[layout]\nstrings = 2\nx_index = 0\n\
                z_first_index = 1\n";
    config::parse(text, Path::new("t.toml")).expect("parses")
}

/// Sensors whose states a test sets, counting reads.
#[derive(Default)]
struct Switches {
    touching: std::sync::Mutex<Vec<bool>>,
    reads: AtomicUsize,
}

impl TouchSensors for Switches {
    fn read(&self, stepper: usize) -> Result<bool, SensorError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.touching
            .lock()
            .unwrap()
            .get(stepper)
            .copied()
            .ok_or(SensorError::NoSensor { stepper })
    }
    fn describe(&self) -> String {
        "switches".into()
    }
}

fn state(stepper: usize, touching: bool) -> TouchState {
    TouchState {
        stepper,
        touching: Some(touching),
        error: None,
    }
}

#[tokio::test(start_paused = true)]
async fn states_are_read_once_a_period_outside_operations_and_changes_wake_receivers() {
    let cfg = config();
    let layout: Arc<Layout> = Arc::new(cfg.layout.clone());
    let switches = Arc::new(Switches::default());
    *switches.touching.lock().unwrap() = vec![false; 5];
    let busy = Arc::new(AtomicBool::new(false));
    let shutdown = CancellationToken::new();
    let (mut rx, task) = {
        let busy = busy.clone();
        sensors::watch::spawn(
            switches.clone(),
            layout,
            Arc::new(move || busy.load(Ordering::SeqCst)),
            Duration::from_secs(1),
            shutdown.clone(),
        )
    };
    let first = rx
        .wait_for(|s| s.read_at.is_some())
        .await
        .expect("first")
        .clone();
    assert_eq!(
        first.sensors,
        (1..=4).map(|s| state(s, false)).collect::<Vec<_>>()
    );
    rx.mark_unchanged();

    // Ten seconds unchanged: ten readings of four sensors, no wake-up.
    let reads = switches.reads.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let in_ten = switches.reads.load(Ordering::SeqCst) - reads;
    assert_eq!(in_ten, 40, "at most once a second");
    assert!(!rx.has_changed().expect("open"), "nothing changed");

    // Stepper 3 touches: one wake-up with its new state.
    switches.touching.lock().unwrap()[3] = true;
    rx.changed().await.expect("changed");
    assert_eq!(rx.borrow_and_update().sensors[2], state(3, true));

    // While an operation runs the watch does not read at all.
    busy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reads = switches.reads.load(Ordering::SeqCst);
    switches.touching.lock().unwrap()[3] = false;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(switches.reads.load(Ordering::SeqCst), reads, "no reads");
    assert!(!rx.has_changed().expect("open"));
    busy.store(false, Ordering::SeqCst);
    rx.changed().await.expect("read again after the operation");
    assert_eq!(rx.borrow().sensors[2], state(3, false));

    shutdown.cancel();
    task.await.expect("stops");
}

#[test]
fn a_sensor_that_cannot_be_read_is_an_error_not_a_state() {
    let cfg = config();
    let got = sensors::watch::read_all(&sensors::NoSensors, &cfg.layout);
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(
        |s| s.touching.is_none() && s.error.as_deref().is_some_and(|e| e.contains("disabled"))
    ));
}
