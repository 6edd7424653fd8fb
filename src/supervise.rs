//! Keeping a part alive through its own bugs: a panic in one round of a
//! part's work is caught, logged and turned into an error the part handles
//! like any other failure (it backs off and starts the next round), so one
//! part's defect never takes the others, or the daemon, down.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

/// Runs one round of `part`'s work; a panic becomes `Err` with its message.
pub async fn guarded<T>(part: &str, round: impl Future<Output = T>) -> Result<T, String> {
    // Unwind safety: a round owns or re-creates what it uses (connections,
    // buffers); state shared with other parts is behind channels and locks
    // that stay consistent.
    match AssertUnwindSafe(round).catch_unwind().await {
        Ok(v) => Ok(v),
        Err(p) => {
            let msg = panic_text(p.as_ref());
            tracing::error!(part, panic = %msg, "internal error in this part: it starts again");
            Err(format!("internal error: {msg}"))
        }
    }
}

fn panic_text(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_round_becomes_an_error_and_the_next_round_runs() {
        let mut rounds = 0;
        let mut results = Vec::new();
        for i in 0..3 {
            rounds += 1;
            results.push(
                guarded("test", async move {
                    if i == 1 {
                        panic!("round {i} failed");
                    }
                    i
                })
                .await,
            );
        }
        assert_eq!(rounds, 3);
        assert_eq!(results[0], Ok(0));
        assert_eq!(
            results[1],
            Err("internal error: round 1 failed".to_string())
        );
        assert_eq!(results[2], Ok(2));
    }
}
