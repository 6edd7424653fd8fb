//! `stringdriverd report`: one self-contained HTML page with plots of what
//! a host recorded over a time window (issue 14 item 2).
//!
//! - [`query`] reads PostgreSQL through [`crate::store::pg`], aggregated
//!   server-side into at most [`BUCKETS`] time buckets (min and max per
//!   bucket), so memory depends on the page's width, never on the window;
//!   gaps and operations are capped lists with exact totals beside them.
//! - [`chart`] draws the SVG charts in Rust (no script, no network).
//! - [`page`] puts them in one HTML file with the summary table and a JSON
//!   block (`<script type="application/json" id="report-data">`) holding
//!   every number the page shows, for tools and tests.
//!
//! The page opens without a network: no external stylesheet, font, image or
//! script; hover texts are SVG `<title>` elements.

pub mod chart;
pub mod page;
pub mod query;

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::store::pg;

/// Time buckets per chart: one per horizontal pixel of a chart's plot area.
pub const BUCKETS: usize = chart::PLOT_WIDTH as usize;

/// A gap in recording is a span at least this long without a row…
const MIN_GAP: Duration = Duration::from_secs(2);

/// …and at least this many snapshot intervals (`[snapshot] interval`).
const GAP_INTERVALS: u32 = 3;

/// What `stringdriverd report` was asked.
#[derive(Debug, Clone)]
pub struct ReportArgs {
    /// The configuration file (for the host, the database and the snapshot interval).
    pub config: PathBuf,
    /// The host whose rows to plot; the configuration's host if `None`.
    pub host: Option<String>,
    /// Start of the window (inclusive).
    pub since: DateTime<Utc>,
    /// End of the window (exclusive).
    pub until: DateTime<Utc>,
    /// The HTML file to write.
    pub out: PathBuf,
    /// A `postgres://` URL without a password, instead of the
    /// configuration's `[database]`.
    pub database_url: Option<String>,
}

/// What the report found, printed by the command.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportSummary {
    /// The file written.
    pub out: PathBuf,
    /// The host.
    pub host: String,
    /// `machine_state` rows in the window.
    pub machine_state_rows: u64,
    /// `controls` rows (audmon frames) in the window.
    pub controls_rows: u64,
    /// Operations in the window.
    pub operations: u64,
    /// Gaps in `machine_state` found.
    pub gaps: u64,
}

impl ReportSummary {
    /// The lines the command prints.
    pub fn render(&self) -> String {
        if self.machine_state_rows == 0 && self.controls_rows == 0 && self.operations == 0 {
            return format!(
                "{}: nothing was recorded for host {} in the window (the report says so)\n",
                self.out.display(),
                self.host
            );
        }
        format!(
            "{}: host {}: {} machine_state rows, {} controls rows, {} operations, {} gaps in recording\n",
            self.out.display(),
            self.host,
            self.machine_state_rows,
            self.controls_rows,
            self.operations,
            self.gaps
        )
    }
}

/// Why no report was written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The configuration cannot be loaded.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// `--until` is not after `--since`.
    #[error("--until ({until}) must be after --since ({since})")]
    Window {
        /// `--since` as given.
        since: String,
        /// `--until` as given.
        until: String,
    },
    /// `--host` is empty.
    #[error("--host must not be empty")]
    Host,
    /// `--database-url` cannot be used.
    #[error("--database-url: {0}")]
    DatabaseUrl(String),
    /// No connection.
    #[error(transparent)]
    Connect(#[from] pg::StoreConnectError),
    /// The database has not the schema the report reads.
    #[error("{0}")]
    Schema(String),
    /// A query failed.
    #[error("{what}: {cause}")]
    Query {
        /// Which query.
        what: &'static str,
        /// The server's words.
        cause: String,
    },
    /// The file cannot be written.
    #[error("cannot write {}: {cause}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
}

/// Writes the report `args` asks for and says what it found.
pub async fn run(args: ReportArgs) -> Result<ReportSummary, ReportError> {
    if args.until <= args.since {
        return Err(ReportError::Window {
            since: rfc3339(args.since),
            until: rfc3339(args.until),
        });
    }
    let mut cfg = crate::config::load(&args.config)?;
    if let Some(url) = &args.database_url {
        cfg.database
            .use_url(url)
            .map_err(ReportError::DatabaseUrl)?;
    }
    let host = match &args.host {
        Some(h) if h.trim().is_empty() => return Err(ReportError::Host),
        Some(h) => h.clone(),
        None => cfg.host.clone(),
    };
    // The parent must exist: say so before querying for minutes.
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(ReportError::Write {
                path: args.out.clone(),
                cause: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no directory {}", parent.display()),
                ),
            });
        }
    }
    let target = pg::pg_config(&cfg.database)?;
    let client = pg::connect(&target).await?;
    check_schema(&client).await?;

    let gap = cfg
        .snapshot
        .interval
        .saturating_mul(GAP_INTERVALS)
        .max(MIN_GAP);
    let window = query::Window {
        host: host.clone(),
        since: args.since,
        until: args.until,
        buckets: BUCKETS,
        gap,
    };
    let layout = (host == cfg.host).then_some(&cfg.layout);
    let data = query::fetch(&client, &window, layout, Utc::now()).await?;
    let html = page::render(&window, &data);
    write_atomically(&args.out, html.as_bytes())?;
    Ok(ReportSummary {
        out: args.out,
        host,
        machine_state_rows: data.counts.machine_state,
        controls_rows: data.counts.controls,
        operations: data.ops.total,
        gaps: data.state_gaps.total,
    })
}

/// The oldest schema the queries read: V2 added `operations.completed_at`
/// and `stepper_roles`.
const OLDEST_SCHEMA: i32 = 2;

/// The report only reads: a schema behind this build (V3 adds indexes only)
/// or ahead of it is read with a warning, a schema without the tables it
/// reads is an error naming the command that fixes it.
async fn check_schema(client: &tokio_postgres::Client) -> Result<(), ReportError> {
    use crate::store::migrate::{check_migrated, MigrateError};
    match check_migrated(client).await {
        Ok(_) => Ok(()),
        Err(
            e @ MigrateError::NotMigrated {
                current: Some(v), ..
            },
        ) if v >= OLDEST_SCHEMA => {
            tracing::warn!(error = %e, "reading an older schema: the report may be slower without the newer indexes");
            Ok(())
        }
        Err(e @ MigrateError::Ahead { .. }) => {
            tracing::warn!(error = %e, "reading a newer schema: the report reads only the columns it knows");
            Ok(())
        }
        Err(e) => Err(ReportError::Schema(e.to_string())),
    }
}

/// Writes through a temporary file and a rename: a reader never sees half a report.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<(), ReportError> {
    let fail = |cause| ReportError::Write {
        path: path.to_path_buf(),
        cause,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report.html".to_string());
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// A time as the page and the errors print it.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}
