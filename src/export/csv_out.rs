//! The CSV data files, for spreadsheets: one header line, one line per
//! frame, one column per array element (`observation.state.x`,
//! `observation.partials.frequency.channel_0.partial_0`, ...; the names of
//! [`super::features::Feature::csv_names`]). Timestamps in RFC 3339 UTC,
//! booleans `true`/`false`, numbers in Rust's shortest round-trip form.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::{SecondsFormat, TimeZone, Utc};

use super::features::{Batch, Data, Feature, Layout};
use super::ExportError;

/// Writes batches into data/chunk-*/file-*.csv.
pub struct CsvSink {
    out: PathBuf,
    features: Vec<Feature>,
    header: String,
    frames_per_file: u64,
    current: Option<(PathBuf, BufWriter<File>)>,
    in_current: u64,
    files: Vec<PathBuf>,
}

impl CsvSink {
    /// A sink for `layout`'s columns under `out`.
    pub fn new(out: &Path, layout: &Layout, frames_per_file: u64) -> Result<CsvSink, ExportError> {
        let names: Vec<String> = layout
            .features
            .iter()
            .flat_map(Feature::csv_names)
            .map(|n| quote(&n))
            .collect();
        Ok(CsvSink {
            out: out.to_path_buf(),
            features: layout.features.clone(),
            header: names.join(",") + "\n",
            frames_per_file,
            current: None,
            in_current: 0,
            files: Vec::new(),
        })
    }

    fn open_next(&mut self) -> Result<(), ExportError> {
        self.close_current()?;
        let (path, file) = super::create_data_file(&self.out, self.files.len() as u64, "csv")?;
        let mut w = BufWriter::with_capacity(1 << 16, file);
        w.write_all(self.header.as_bytes())
            .map_err(|e| ExportError::write(&path, e))?;
        self.files.push(path.clone());
        self.current = Some((path, w));
        self.in_current = 0;
        Ok(())
    }

    fn close_current(&mut self) -> Result<(), ExportError> {
        if let Some((path, mut w)) = self.current.take() {
            w.flush().map_err(|e| ExportError::write(&path, e))?;
            w.into_inner()
                .map_err(|e| ExportError::write(&path, e.error()))?
                .sync_all()
                .map_err(|e| ExportError::write(&path, e))?;
        }
        Ok(())
    }

    /// Appends `batch`, starting new files as they fill.
    pub fn write(&mut self, batch: &Batch) -> Result<(), ExportError> {
        let mut line = String::new();
        for r in 0..batch.rows {
            if self.current.is_none() || self.in_current >= self.frames_per_file {
                self.open_next()?;
            }
            line.clear();
            for (f, data) in self.features.iter().zip(&batch.columns) {
                let w = f.width();
                for i in r * w..(r + 1) * w {
                    if !line.is_empty() {
                        line.push(',');
                    }
                    cell(&mut line, data, i);
                }
            }
            line.push('\n');
            if let Some((path, w)) = self.current.as_mut() {
                w.write_all(line.as_bytes())
                    .map_err(|e| ExportError::write(path, e))?;
            }
            self.in_current += 1;
        }
        Ok(())
    }

    /// Closes the last file; an export with no frames gets one file with
    /// the header only.
    pub fn finish(mut self) -> Result<Vec<PathBuf>, ExportError> {
        if self.files.is_empty() {
            self.open_next()?;
        }
        self.close_current()?;
        Ok(self.files)
    }
}

fn cell(line: &mut String, data: &Data, i: usize) {
    use std::fmt::Write as _;
    let _ = match data {
        Data::Timestamp(v) => {
            let t = Utc
                .timestamp_micros(v[i])
                .single()
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
                .unwrap_or_default();
            write!(line, "{t}")
        }
        Data::Int64(v) => write!(line, "{}", v[i]),
        Data::Int32(v) => write!(line, "{}", v[i]),
        Data::Float32(v) => write!(line, "{}", v[i]),
        Data::Float64(v) => write!(line, "{}", v[i]),
        Data::Bool(v) => write!(line, "{}", v[i]),
        Data::Text(v) => write!(line, "{}", quote(&v[i])),
    };
}

/// RFC 4180 quoting when the text needs it.
fn quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
