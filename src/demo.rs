//! `stringdriverd demo`: simulated boards for every board of a configuration,
//! driven by the real board drivers, with a status line per board. This is
//! the whole stack that exists so far, runnable without hardware.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::board::{self, BoardSpec, SerialConnector};
use crate::config::Config;
use crate::sim::{Profile, SimOptions, Simulator};

/// Errors starting the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A simulator could not start.
    #[error("board {board}: {source}")]
    Sim {
        /// Board name.
        board: String,
        /// Why.
        #[source]
        source: crate::sim::SimError,
    },
}

/// Runs until `stop` resolves.
pub async fn run(
    config: Config,
    speed_scale: f64,
    stop: impl Future<Output = ()>,
) -> Result<(), DemoError> {
    let shutdown = CancellationToken::new();
    let mut sims = Vec::new();
    let mut boards = Vec::new();
    for (i, b) in config.boards.iter().enumerate() {
        let mut profile = Profile::for_firmware(b.firmware, Some(b.steppers));
        profile.width = b.int_bytes;
        let mut opts = SimOptions::new(profile);
        opts.speed_scale = speed_scale;
        // The simulated bootloader finishes inside the configured reset wait.
        opts.reset_window = b
            .reset_wait
            .mul_f64(0.8 * speed_scale.max(f64::MIN_POSITIVE));
        let sim = Simulator::spawn(opts, &b.port).map_err(|source| DemoError::Sim {
            board: b.name.clone(),
            source,
        })?;
        tracing::info!(board = %b.name, link = %b.port.display(), "simulated board started");
        sims.push(sim);
        let Some(mut spec) = BoardSpec::from_config(&config, i) else {
            continue;
        };
        spec.speeds.iter_mut().for_each(|s| *s *= speed_scale);
        let connector = Arc::new(SerialConnector {
            path: spec.port.clone(),
            baud: spec.baud,
        });
        boards.push(board::spawn(spec, connector, None, shutdown.clone()));
    }

    let report = async {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            for (h, _) in &boards {
                let s = h.status();
                tracing::info!(
                    board = %s.name,
                    link = %s.link,
                    positions = ?s.positions,
                    polls_ok = s.polls_ok,
                    polls_failed = s.polls_failed,
                    "status"
                );
            }
        }
    };
    tokio::select! {
        _ = stop => {}
        _ = report => {}
    }
    tracing::info!("stopping");
    shutdown.cancel();
    for (_, task) in boards {
        let _ = task.await;
    }
    for sim in sims {
        let v = sim.violations();
        if !v.is_empty() {
            tracing::error!(
                count = v.len(),
                "the simulated boards recorded safety violations"
            );
        }
        sim.stop();
    }
    Ok(())
}
