//! `stringdriverd export`: a host's recordings over a time window as a
//! dataset for machine learning, in the layout of LeRobot's datasets
//! (Parquet frames with fixed-shape `observation.*` features, `meta/info.json`
//! naming every feature, `meta/episodes.jsonl`, `meta/stats.json`).
//!
//! One row per audmon `controls` frame of the host in the window, joined
//! as of its time to the `machine_state` in force (the row linked by
//! `controls_id`, else the newest of the host at or before the frame within
//! the tolerance); frames with none are dropped and counted. The frames are
//! read through a server-side portal in bounded batches and written as they
//! come, so memory does not grow with the window ([`query`], [`run`]).
//!
//! Modules: [`args`] (what was asked, checked), [`query`] (the SQL and the
//! streamed read), [`features`] (the dataset's columns, one definition for
//! the Arrow schema, the CSV header, info.json and the statistics),
//! [`episodes`] (operations as episodes, nesting by time), [`parquet_out`] and
//! [`csv_out`] (the two writers), [`stats`] (streamed statistics), [`meta`]
//! (the meta/ files).

pub mod args;
pub mod csv_out;
pub mod episodes;
pub mod features;
pub mod meta;
pub mod parquet_out;
pub mod query;
pub mod stats;

use std::path::PathBuf;

pub use args::{ExportArgs, Format};

use crate::store::pg::{self, error_text};
use features::{Batch, Layout};

/// The dataset layout version written in info.json.
pub const FORMAT_VERSION: &str = "stringdriver-export/1";

/// Frames fetched from PostgreSQL per round trip, and per Arrow batch.
pub const BATCH_FRAMES: usize = 2048;

/// Why an export failed. Every message says what was wrong in the words of
/// the command line.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The arguments cannot be used (window, output directory, format).
    #[error("{0}")]
    Args(String),
    /// The configuration file could not be loaded.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// No connection to PostgreSQL.
    #[error(transparent)]
    Connect(#[from] pg::StoreConnectError),
    /// The database is not at this build's schema.
    #[error(transparent)]
    Schema(#[from] crate::store::migrate::MigrateError),
    /// The host has no rows at all.
    #[error(
        "host `{host}` has no rows in controls, machine_state or stepper_roles of {server}{}",
        if known.is_empty() { String::new() } else { format!("; hosts there: {}", known.join(", ")) }
    )]
    UnknownHost {
        /// The host asked for.
        host: String,
        /// The server, from [`pg::describe`].
        server: String,
        /// Hosts that do have rows.
        known: Vec<String>,
    },
    /// A query failed.
    #[error("{what}: {cause}")]
    Query {
        /// What was being read.
        what: &'static str,
        /// The server's words.
        cause: String,
    },
    /// A row does not fit the dataset's fixed shapes.
    #[error("{0}")]
    Shape(String),
    /// Writing the dataset failed.
    #[error("{}: {cause}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: String,
    },
}

impl ExportError {
    pub(crate) fn query(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> ExportError {
        move |e| ExportError::Query {
            what,
            cause: error_text(&e),
        }
    }

    pub(crate) fn write(path: &std::path::Path, cause: impl std::fmt::Display) -> ExportError {
        ExportError::Write {
            path: path.to_path_buf(),
            cause: cause.to_string(),
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ExportSummary {
    /// The dataset directory.
    pub out: PathBuf,
    /// Host exported.
    pub host: String,
    /// Window start (inclusive).
    pub since: chrono::DateTime<chrono::Utc>,
    /// Window end (exclusive).
    pub until: chrono::DateTime<chrono::Utc>,
    /// Frames written.
    pub frames: u64,
    /// Frames of the window dropped for having no machine_state in force.
    pub dropped: u64,
    /// Episodes (operations) in meta/episodes.jsonl.
    pub episodes: u64,
    /// Data files written.
    pub files: Vec<PathBuf>,
}

impl ExportSummary {
    /// The lines printed on stdout.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if self.frames == 0 && self.dropped == 0 {
            s.push_str(&format!(
                "empty window: host {} has no controls frames from {} to {}; wrote an empty dataset\n",
                self.host,
                self.since.to_rfc3339(),
                self.until.to_rfc3339()
            ));
        }
        s.push_str(&format!(
            "exported {} frames of host {} ({} to {}) into {}\n",
            self.frames,
            self.host,
            self.since.to_rfc3339(),
            self.until.to_rfc3339(),
            self.out.display()
        ));
        s.push_str(&format!(
            "dropped {} frames with no machine_state in force\n",
            self.dropped
        ));
        s.push_str(&format!("episodes: {}\n", self.episodes));
        s.push_str(&format!("data files: {}\n", self.files.len()));
        s
    }
}

/// Runs an export as `args` says: loads the configuration, connects
/// through [`crate::store::pg`], checks the schema and the host, and writes
/// the dataset.
pub async fn run(args: ExportArgs) -> Result<ExportSummary, ExportError> {
    let plan = args.plan()?;
    let target = plan.target.clone();
    let client = pg::connect(&target).await?;
    crate::store::migrate::check_migrated(&client).await?;
    export(client, &pg::describe(&target), plan).await
}

/// The export proper, on an open session (the benchmarks call it too).
pub async fn export(
    mut client: tokio_postgres::Client,
    server: &str,
    plan: args::Plan,
) -> Result<ExportSummary, ExportError> {
    let tx = query::snapshot(&mut client).await?;
    query::check_host(&tx, &plan.host, server).await?;
    let layout = query::layout(&tx, &plan).await?;
    let ops = query::operations(&tx, &plan).await?;
    let mut episodes = episodes::Episodes::new(ops);
    let writer_layout = layout.clone();
    let out = plan.out.clone();
    let format = plan.format;
    let frames_per_file = plan.frames_per_file;

    // The writer runs on its own thread (encoding and compression are CPU
    // work) and takes batches through a short queue: while it encodes one
    // batch the next is being read, and at most a few are in memory.
    let (tx_batches, rx_batches) = std::sync::mpsc::sync_channel::<Batch>(2);
    let writer = tokio::task::spawn_blocking(move || {
        let mut sink = Sink::open(&out, format, &writer_layout, frames_per_file)?;
        let mut stats = stats::Stats::new(&writer_layout.features);
        for batch in rx_batches {
            stats.add(&batch);
            sink.write(&batch)?;
        }
        let files = sink.finish()?;
        Ok::<_, ExportError>((files, stats))
    });

    let mut counts = query::Counts::default();
    let read = query::stream_frames(&tx, &plan, &layout, &mut episodes, &mut counts, |batch| {
        // A closed queue means the writer failed; its error is reported below.
        tx_batches.send(batch).is_ok()
    })
    .await;
    drop(tx_batches);
    let written = writer.await.map_err(|e| ExportError::Write {
        path: plan.out.clone(),
        cause: format!("the writer thread failed: {e}"),
    })?;
    read?;
    let (files, stats) = written?;
    // Nothing was written to the database: the snapshot just ends.
    let _ = tx.rollback().await;

    let summary = ExportSummary {
        out: plan.out.clone(),
        host: plan.host.clone(),
        since: plan.since,
        until: plan.until,
        frames: counts.frames,
        dropped: counts.dropped,
        episodes: episodes.len() as u64,
        files: files.clone(),
    };
    meta::write(&plan, &layout, &counts, &episodes, &stats, &files)?;
    Ok(summary)
}

/// The data files being written, in either format.
enum Sink {
    Parquet(Box<parquet_out::ParquetSink>),
    Csv(csv_out::CsvSink),
}

impl Sink {
    fn open(
        out: &std::path::Path,
        format: Format,
        layout: &Layout,
        frames_per_file: u64,
    ) -> Result<Sink, ExportError> {
        Ok(match format {
            Format::Parquet => Sink::Parquet(Box::new(parquet_out::ParquetSink::new(
                out,
                layout,
                frames_per_file,
            )?)),
            Format::Csv => Sink::Csv(csv_out::CsvSink::new(out, layout, frames_per_file)?),
        })
    }

    fn write(&mut self, batch: &Batch) -> Result<(), ExportError> {
        match self {
            Sink::Parquet(s) => s.write(batch),
            Sink::Csv(s) => s.write(batch),
        }
    }

    /// Closes the last file; an empty export still gets one file (with the
    /// schema or the header and no rows), so that readers find the columns.
    fn finish(self) -> Result<Vec<PathBuf>, ExportError> {
        match self {
            Sink::Parquet(s) => s.finish(),
            Sink::Csv(s) => s.finish(),
        }
    }
}

/// `data/chunk-CCC/file-FFF.EXT` of file number `n` (1000 files a chunk).
pub fn data_path(out: &std::path::Path, n: u64, ext: &str) -> PathBuf {
    out.join("data")
        .join(format!("chunk-{:03}", n / 1000))
        .join(format!("file-{:03}.{ext}", n % 1000))
}

/// Creates data file number `n` ([`data_path`]) and its chunk directory.
pub fn create_data_file(
    out: &std::path::Path,
    n: u64,
    ext: &str,
) -> Result<(PathBuf, std::fs::File), ExportError> {
    let path = data_path(out, n, ext);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ExportError::write(dir, e))?;
    }
    let file = std::fs::File::create(&path).map_err(|e| ExportError::write(&path, e))?;
    Ok((path, file))
}
