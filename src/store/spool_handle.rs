//! Async access to the spool: its blocking work (SQLite, fsync) runs on
//! tokio's blocking threads, never on the async workers, and every append
//! wakes the shipper.
//!
//! It also keeps the account of captures the spool could not take (a full
//! disk): counted by reason, logged once when the trouble starts and once
//! with a summary when it ends, and written into the spool as soon as a
//! write succeeds (see the spool's module doc for why not elsewhere).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use super::record::{OperationEvent, Record};
use super::spool::{Spool, SpoolError, SpoolStatus, Spooled};

/// A shared, cloneable handle to the spool.
#[derive(Clone)]
pub struct SpoolHandle {
    spool: Arc<Mutex<Spool>>,
    appended: Arc<Notify>,
    losses: Arc<Mutex<Losses>>,
}

/// Captures not taken, not yet written to the spool, and the trouble going on.
#[derive(Debug, Default)]
struct Losses {
    /// By reason, waiting for a write to succeed.
    pending: BTreeMap<String, u64>,
    /// Since when appends fail, why, and how many records were lost since.
    outage: Option<(DateTime<Utc>, String, u64)>,
}

/// The reason key of an append that lost its records, or `None` when the
/// spool counts the refusal itself (over its limit: `rejected`).
fn loss_reason(e: &SpoolError) -> Option<&'static str> {
    match e {
        SpoolError::Full { .. } => None,
        SpoolError::DiskFull { .. } => Some("disk_full"),
        _ => Some("spool_error"),
    }
}

impl Losses {
    fn lock(losses: &Mutex<Losses>) -> std::sync::MutexGuard<'_, Losses> {
        losses.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SpoolHandle {
    /// Wraps an open spool.
    pub fn new(spool: Spool) -> SpoolHandle {
        SpoolHandle {
            spool: Arc::new(Mutex::new(spool)),
            appended: Arc::new(Notify::new()),
            losses: Arc::default(),
        }
    }

    /// Appends with `f`, keeping the account of records it could not take.
    async fn append_with(
        &self,
        n: usize,
        f: impl FnOnce(&mut Spool) -> Result<Vec<i64>, SpoolError> + Send + 'static,
    ) -> Result<Vec<i64>, SpoolError> {
        let losses = self.losses.clone();
        let result = self
            .with(move |s| {
                let result = f(s);
                let mut l = Losses::lock(&losses);
                if let Err(e) = &result {
                    let Some(reason) = loss_reason(e) else {
                        return result;
                    };
                    *l.pending.entry(reason.to_string()).or_default() += n as u64;
                    match &mut l.outage {
                        Some((_, _, count)) => *count += n as u64,
                        None => {
                            tracing::error!(error = %e, "the spool cannot take captures: they are lost and counted until it can (logged once)");
                            l.outage = Some((Utc::now(), reason.to_string(), n as u64));
                        }
                    }
                } else if let Some((since, reason, count)) = l.outage.take() {
                    let lasted = (Utc::now() - since).to_std().unwrap_or_default();
                    tracing::warn!(
                        lost = count,
                        %reason,
                        since = %since.to_rfc3339(),
                        lasted = %humantime::format_duration(std::time::Duration::from_secs(lasted.as_secs())),
                        "the spool takes captures again"
                    );
                }
                // Written with this append's success, or tried again after a
                // failure (an update may fit where a new record did not).
                if !l.pending.is_empty() && s.add_lost(&l.pending).is_ok() {
                    l.pending.clear();
                }
                result
            })
            .await;
        if result.is_ok() {
            self.appended.notify_waiters();
        }
        result
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Spool) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, SpoolError> {
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves SQLite consistent (its
            // transactions roll back), so the spool stays usable.
            let mut guard = spool.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| SpoolError::Sqlite {
            path: Default::default(),
            detail: format!("spool task failed: {e}"),
        })?
    }

    /// Appends records durably; returns when they are on disk.
    pub async fn append(&self, records: Vec<Record>) -> Result<Vec<i64>, SpoolError> {
        self.append_with(records.len(), move |s| s.append(&records))
            .await
    }

    /// See [`Spool::append_run_here`].
    pub async fn append_run_here(&self, records: Vec<Record>) -> Result<Vec<i64>, SpoolError> {
        self.append_with(records.len(), move |s| s.append_run_here(&records))
            .await
    }

    /// See [`Spool::running_operations`].
    pub async fn running_operations(&self) -> Result<Vec<OperationEvent>, SpoolError> {
        self.with(|s| s.running_operations()).await
    }

    /// See [`Spool::peek`].
    pub async fn peek(&self, max: usize) -> Result<Vec<Spooled>, SpoolError> {
        self.with(move |s| s.peek(max)).await
    }

    /// See [`Spool::peek_after`].
    pub async fn peek_after(&self, after: i64, max: usize) -> Result<Vec<Spooled>, SpoolError> {
        self.with(move |s| s.peek_after(after, max)).await
    }

    /// See [`Spool::remove`].
    pub async fn remove(&self, shipped: Vec<Spooled>) -> Result<(), SpoolError> {
        self.with(move |s| s.remove(&shipped)).await
    }

    /// See [`Spool::dead_letter`].
    pub async fn dead_letter(&self, seq: i64, error: String) -> Result<(), SpoolError> {
        self.with(move |s| s.dead_letter(seq, &error)).await
    }

    /// See [`Spool::set_last_error_since`].
    pub async fn set_last_error(
        &self,
        error: String,
        since: DateTime<Utc>,
    ) -> Result<(), SpoolError> {
        self.with(move |s| s.set_last_error_since(&error, since))
            .await
    }

    /// See [`Spool::clear_last_error`].
    pub async fn clear_last_error(&self) -> Result<(), SpoolError> {
        self.with(|s| s.clear_last_error()).await
    }

    /// See [`Spool::status`]; the lost captures include those not yet
    /// written to the file.
    pub async fn status(&self) -> Result<SpoolStatus, SpoolError> {
        let losses = self.losses.clone();
        self.with(move |s| {
            let mut st = s.status()?;
            for (reason, n) in &Losses::lock(&losses).pending {
                *st.lost.entry(reason.clone()).or_default() += n;
                st.lost_captures += n;
            }
            Ok(st)
        })
        .await
    }

    /// See [`Spool::set_max_pages`] (tests of a full disk).
    pub async fn set_max_pages(&self, pages: u64) -> Result<(), SpoolError> {
        self.with(move |s| s.set_max_pages(pages)).await
    }

    /// Resolves at the next append (create it before looking at the spool,
    /// so an append in between is not missed).
    pub fn notified(&self) -> Notified<'_> {
        self.appended.notified()
    }
}
