//! systemd integration: readiness, a status line, and watchdog pings. Outside
//! systemd (no `NOTIFY_SOCKET`) every call is a cheap no-op.

use std::time::Duration;

use sd_notify::NotifyState;

/// Tells systemd the daemon is ready, with its first status line in the
/// same message.
pub fn ready_with_status(line: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(line)]);
}

/// Sets the one-line status `systemctl status` shows.
pub fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

/// Tells systemd the daemon is stopping.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// One watchdog ping.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// The watchdog period systemd expects pings within, if it set one for us.
/// As in libsystemd: `WATCHDOG_USEC` set, and `WATCHDOG_PID` unset or ours.
pub fn watchdog_period() -> Option<Duration> {
    watchdog_period_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog_period_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    match pid.map(|p| p.trim().parse::<u32>()) {
        None => Some(Duration::from_micros(usec)),
        Some(Ok(p)) if p == me => Some(Duration::from_micros(usec)),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_period_follows_libsystemd_rules() {
        assert_eq!(
            watchdog_period_from(Some("30000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_period_from(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(watchdog_period_from(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_period_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_period_from(Some("x"), None, 7), None);
        assert_eq!(watchdog_period_from(None, Some("7"), 7), None);
    }
}
