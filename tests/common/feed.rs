//! Helpers of the feed tests (tests/feed.rs, tests/feed_liveness.rs).

use std::path::Path;
use std::time::Duration;

use stringdriverd::config::FeedConfig;
use stringdriverd::feed::FeedStatus;
use tokio::sync::watch;

/// A PID that certainly belonged to a process that has exited and been reaped.
pub fn dead_pid() -> i32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id() as i32;
    child.wait().unwrap();
    pid
}

/// Waits (at most 10 s) until the published status satisfies `pred`.
pub async fn wait_for(
    rx: &mut watch::Receiver<FeedStatus>,
    what: &str,
    pred: impl FnMut(&FeedStatus) -> bool,
) -> FeedStatus {
    let outcome = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(pred))
        .await
        .map(|r| r.map(|s| s.clone()));
    match outcome {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => panic!("feed task ended while waiting for {what}"),
        Err(_) => panic!("timed out waiting for {what}; last {:?}", *rx.borrow()),
    }
}

/// A feed reader of `dir` reading every 20 ms.
pub fn fast_config(dir: &Path, stale_after: Duration) -> FeedConfig {
    FeedConfig {
        dir: dir.to_path_buf(),
        interval: Duration::from_millis(20),
        stale_after,
    }
}
