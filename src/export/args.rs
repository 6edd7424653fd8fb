//! What `stringdriverd export` was asked, and the checks made before any
//! connection: the window, the tolerance and the output directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::ExportError;
use crate::store::pg::PgTarget;

/// Data file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Apache Parquet (zstd), arrays as fixed-size lists.
    Parquet,
    /// Comma-separated text, one column per array element.
    Csv,
}

impl Format {
    /// File name extension.
    pub fn ext(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Csv => "csv",
        }
    }
}

/// Largest tolerance accepted: a state older than a day says nothing about
/// a frame, and a huge value is more likely a typo.
pub const MAX_TOLERANCE: Duration = Duration::from_secs(24 * 3600);

/// Frames per data file unless told otherwise.
pub const DEFAULT_FRAMES_PER_FILE: u64 = 1_000_000;

/// The arguments of `stringdriverd export`.
#[derive(Debug, Clone)]
pub struct ExportArgs {
    /// The configuration file (host and `[database]`).
    pub config: PathBuf,
    /// Host to export; default: the configuration's host.
    pub host: Option<String>,
    /// Window start, inclusive.
    pub since: DateTime<Utc>,
    /// Window end, exclusive.
    pub until: DateTime<Utc>,
    /// The dataset directory: absent or empty.
    pub out: PathBuf,
    /// Data file format.
    pub format: Format,
    /// How old the newest machine_state may be for a frame with no linked one.
    pub tolerance: Duration,
    /// PostgreSQL URL (no password) instead of the configuration's `[database]`.
    pub database_url: Option<String>,
    /// Frames per data file before the next one is started.
    pub frames_per_file: u64,
}

/// A checked export: everything [`super::export`] needs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where to connect.
    pub target: PgTarget,
    /// Host exported.
    pub host: String,
    /// Window start, inclusive.
    pub since: DateTime<Utc>,
    /// Window end, exclusive.
    pub until: DateTime<Utc>,
    /// The dataset directory, created and empty.
    pub out: PathBuf,
    /// Data file format.
    pub format: Format,
    /// As-of tolerance.
    pub tolerance: Duration,
    /// Frames per data file.
    pub frames_per_file: u64,
}

impl ExportArgs {
    /// Checks the arguments, loads the configuration and prepares the
    /// output directory.
    pub fn plan(&self) -> Result<Plan, ExportError> {
        check_window(self.since, self.until)?;
        check_tolerance(self.tolerance)?;
        if self.frames_per_file == 0 {
            return Err(ExportError::Args(
                "--frames-per-file must be at least 1".to_string(),
            ));
        }
        let mut cfg = crate::config::load(&self.config)?;
        if let Some(url) = &self.database_url {
            cfg.database.use_url(url).map_err(|reason| {
                ExportError::Args(format!("--database-url cannot be used: {reason}"))
            })?;
        }
        let target = crate::store::pg::pg_config(&cfg.database)?;
        let host = self.host.clone().unwrap_or(cfg.host);
        if host.trim().is_empty() {
            return Err(ExportError::Args("--host must not be empty".to_string()));
        }
        prepare_out(&self.out)?;
        Ok(Plan {
            target,
            host,
            since: self.since,
            until: self.until,
            out: self.out.clone(),
            format: self.format,
            tolerance: self.tolerance,
            frames_per_file: self.frames_per_file,
        })
    }
}

/// `since` must come before `until`.
pub fn check_window(since: DateTime<Utc>, until: DateTime<Utc>) -> Result<(), ExportError> {
    if since >= until {
        return Err(ExportError::Args(format!(
            "--since {} is not before --until {}: the window is [since, until)",
            since.to_rfc3339(),
            until.to_rfc3339()
        )));
    }
    Ok(())
}

fn check_tolerance(tolerance: Duration) -> Result<(), ExportError> {
    if tolerance > MAX_TOLERANCE {
        return Err(ExportError::Args(format!(
            "--tolerance {} is more than {}: a machine_state that old does not describe a frame",
            humantime::format_duration(tolerance),
            humantime::format_duration(MAX_TOLERANCE)
        )));
    }
    Ok(())
}

/// Creates `out` if absent; refuses one that holds anything, so that an
/// export never mixes with or overwrites an earlier dataset.
pub fn prepare_out(out: &Path) -> Result<(), ExportError> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(ExportError::Args(format!(
                    "--out {} is not empty: export writes a new dataset into an empty or new \
                     directory and never overwrites one; choose another directory or empty it",
                    out.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(out).map_err(|e| {
                ExportError::Args(format!("--out {}: cannot create it: {e}", out.display()))
            })?;
        }
        Err(e) => {
            return Err(ExportError::Args(format!(
                "--out {}: cannot read it as a directory: {e}",
                out.display()
            )))
        }
    }
    // Fail now, not after the whole read, when the directory is not writable.
    let probe = out.join(".stringdriverd-export-probe");
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| {
            ExportError::Args(format!(
                "--out {}: cannot write into it: {e}",
                out.display()
            ))
        })
}
