//! Async access to the spool: its blocking work (SQLite, fsync) runs on
//! tokio's blocking threads, never on the async workers, and every append
//! wakes the shipper.

use std::sync::{Arc, Mutex};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use super::record::{OperationEvent, Record};
use super::spool::{Spool, SpoolError, SpoolStatus, Spooled};

/// A shared, cloneable handle to the spool.
#[derive(Clone)]
pub struct SpoolHandle {
    spool: Arc<Mutex<Spool>>,
    appended: Arc<Notify>,
}

impl SpoolHandle {
    /// Wraps an open spool.
    pub fn new(spool: Spool) -> SpoolHandle {
        SpoolHandle {
            spool: Arc::new(Mutex::new(spool)),
            appended: Arc::new(Notify::new()),
        }
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
        let seqs = self.with(move |s| s.append(&records)).await?;
        self.appended.notify_waiters();
        Ok(seqs)
    }

    /// See [`Spool::append_run_here`].
    pub async fn append_run_here(&self, records: Vec<Record>) -> Result<Vec<i64>, SpoolError> {
        let seqs = self.with(move |s| s.append_run_here(&records)).await?;
        self.appended.notify_waiters();
        Ok(seqs)
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

    /// See [`Spool::set_last_error`].
    pub async fn set_last_error(&self, error: String) -> Result<(), SpoolError> {
        self.with(move |s| s.set_last_error(&error)).await
    }

    /// See [`Spool::status`].
    pub async fn status(&self) -> Result<SpoolStatus, SpoolError> {
        self.with(|s| s.status()).await
    }

    /// Resolves at the next append (create it before looking at the spool,
    /// so an append in between is not missed).
    pub fn notified(&self) -> Notified<'_> {
        self.appended.notified()
    }
}
