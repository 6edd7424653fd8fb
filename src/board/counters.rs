//! Where a board's last known counters survive a daemon restart.
//!
//! Opening a serial port resets an AVR board, so after every daemon start
//! its counters read 0. With the counters known from before (and
//! `restore_counters_after_reset`), the driver writes them back before anything
//! may move. They are only worth that if they are right: a counter is saved
//! as untrusted *before* a move is sent and as trusted only after the move was
//! confirmed, so a crash in the middle of a move never restores a stale value
//! as if it were true.
//!
//! # File format (`counters.json`, format 1)
//!
//! ```json
//! {"format": 1, "boards": {"carriage": {"positions": [0, 20], "trusted": [true, false], "saved_at": "2026-11-25T01:00:00Z"}}}
//! ```
//!
//! Written whole to a temporary file, synced, renamed over the old one and
//! the directory synced, so a crash leaves the old or the new file, never a
//! mix. A file that cannot be read is moved aside and reported; every board
//! then starts untrusted.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::driver::KnownCounters;

/// A place to keep counters. The driver awaits `save` before a move.
pub trait CounterStore: Send + Sync + 'static {
    /// Saves `known` for `board`; returns when it is on disk.
    fn save<'a>(
        &'a self,
        board: &'a str,
        known: &'a KnownCounters,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Saved {
    positions: Vec<i32>,
    trusted: Vec<bool>,
    saved_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct FileContents {
    format: u32,
    boards: BTreeMap<String, Saved>,
}

/// The counters file.
pub struct CounterFile {
    path: PathBuf,
    contents: Mutex<FileContents>,
}

impl CounterFile {
    /// Opens (or starts) the file at `path`. Returns the file and the counters
    /// it held, by board name; an unreadable file is moved aside and reported
    /// in the third value.
    pub fn open(
        path: &Path,
    ) -> (
        Arc<CounterFile>,
        BTreeMap<String, KnownCounters>,
        Option<String>,
    ) {
        let (contents, problem) = crate::files::read_json::<FileContents>(path, |c| c.format);
        let contents = contents.unwrap_or_default();
        let known = contents
            .boards
            .iter()
            .filter(|(_, s)| s.positions.len() == s.trusted.len())
            .map(|(name, s)| {
                (
                    name.clone(),
                    KnownCounters {
                        positions: s.positions.clone(),
                        trusted: s.trusted.clone(),
                    },
                )
            })
            .collect();
        let file = Arc::new(CounterFile {
            path: path.to_path_buf(),
            contents: Mutex::new(FileContents {
                format: 1,
                ..contents
            }),
        });
        (file, known, problem)
    }

    fn write(&self, board: &str, known: &KnownCounters) -> Result<(), String> {
        let mut c = self.contents.lock().unwrap_or_else(|e| e.into_inner());
        c.boards.insert(
            board.to_string(),
            Saved {
                positions: known.positions.clone(),
                trusted: known.trusted.clone(),
                saved_at: Utc::now(),
            },
        );
        let bytes = serde_json::to_vec(&*c).map_err(|e| e.to_string())?;
        crate::files::write_atomically(&self.path, &bytes)
    }
}

impl CounterStore for Arc<CounterFile> {
    fn save<'a>(
        &'a self,
        board: &'a str,
        known: &'a KnownCounters,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        let me = self.clone();
        let board = board.to_string();
        let known = known.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || me.write(&board, &known))
                .await
                .map_err(|e| e.to_string())?
        })
    }
}
