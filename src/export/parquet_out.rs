//! The Parquet data files: Arrow record batches written with zstd, in row
//! groups small enough to stream (a reader holds one at a time, and so does
//! this writer), a new file every `frames_per_file` frames.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::types::{
    Float32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType,
};
use arrow_array::{
    ArrayRef, BooleanArray, FixedSizeListArray, PrimitiveArray, RecordBatch, StringArray,
};
use arrow_schema::{Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::features::{Batch, Data, Feature, Layout};
use super::ExportError;

/// Most frames in a row group.
pub const ROW_GROUP_FRAMES: usize = 65_536;

/// Most encoded bytes in a row group: bounds the writer's buffer whatever
/// the shapes.
pub const ROW_GROUP_BYTES: usize = 64 << 20;

/// zstd level: 3 is zstd's default, fast with most of the gain.
const ZSTD_LEVEL: i32 = 3;

/// Writes batches into data/chunk-*/file-*.parquet.
pub struct ParquetSink {
    out: PathBuf,
    schema: Arc<Schema>,
    features: Vec<Feature>,
    frames_per_file: u64,
    current: Option<(PathBuf, ArrowWriter<File>)>,
    in_current: u64,
    files: Vec<PathBuf>,
}

impl ParquetSink {
    /// A sink for `layout`'s columns under `out`; no file is opened before
    /// the first frame (or [`ParquetSink::finish`] of an empty export).
    pub fn new(
        out: &Path,
        layout: &Layout,
        frames_per_file: u64,
    ) -> Result<ParquetSink, ExportError> {
        Ok(ParquetSink {
            out: out.to_path_buf(),
            schema: layout.schema(),
            features: layout.features.clone(),
            frames_per_file,
            current: None,
            in_current: 0,
            files: Vec::new(),
        })
    }

    fn open_next(&mut self) -> Result<(), ExportError> {
        self.close_current()?;
        let (path, file) = super::create_data_file(&self.out, self.files.len() as u64, "parquet")?;
        let level = ZstdLevel::try_new(ZSTD_LEVEL).map_err(|e| ExportError::write(&path, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(ROW_GROUP_FRAMES))
            .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
            .set_created_by(format!("stringdriverd {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = ArrowWriter::try_new(file, self.schema.clone(), Some(props))
            .map_err(|e| ExportError::write(&path, e))?;
        self.files.push(path.clone());
        self.current = Some((path, writer));
        self.in_current = 0;
        Ok(())
    }

    fn close_current(&mut self) -> Result<(), ExportError> {
        if let Some((path, writer)) = self.current.take() {
            writer.close().map_err(|e| ExportError::write(&path, e))?;
        }
        Ok(())
    }

    /// Appends `batch`, starting new files as they fill.
    pub fn write(&mut self, batch: &Batch) -> Result<(), ExportError> {
        let record = record_batch(&self.schema, &self.features, batch)
            .map_err(|e| ExportError::write(&self.out, e))?;
        let mut done = 0;
        while done < record.num_rows() {
            if self.current.is_none() || self.in_current >= self.frames_per_file {
                self.open_next()?;
            }
            let room = (self.frames_per_file - self.in_current) as usize;
            let n = room.min(record.num_rows() - done);
            if let Some((path, writer)) = self.current.as_mut() {
                writer
                    .write(&record.slice(done, n))
                    .map_err(|e| ExportError::write(path, e))?;
            }
            self.in_current += n as u64;
            done += n;
        }
        Ok(())
    }

    /// Closes the last file and returns every file written; an export with
    /// no frames gets one file with the schema and no rows.
    pub fn finish(mut self) -> Result<Vec<PathBuf>, ExportError> {
        if self.files.is_empty() {
            self.open_next()?;
        }
        self.close_current()?;
        Ok(self.files)
    }
}

/// `batch` as an Arrow record batch of `schema`.
pub fn record_batch(
    schema: &Arc<Schema>,
    features: &[Feature],
    batch: &Batch,
) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let columns = features
        .iter()
        .zip(&batch.columns)
        .map(|(f, data)| column(f, data, batch.rows))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns)
}

fn column(
    feature: &Feature,
    data: &Data,
    batch_rows: usize,
) -> Result<ArrayRef, arrow_schema::ArrowError> {
    let mut array: ArrayRef = match data {
        Data::Timestamp(v) => Arc::new(
            PrimitiveArray::<TimestampMicrosecondType>::from(v.clone()).with_timezone("UTC"),
        ),
        Data::Int64(v) => Arc::new(PrimitiveArray::<Int64Type>::from(v.clone())),
        Data::Int32(v) => Arc::new(PrimitiveArray::<Int32Type>::from(v.clone())),
        Data::Float32(v) => Arc::new(PrimitiveArray::<Float32Type>::from(v.clone())),
        Data::Float64(v) => Arc::new(PrimitiveArray::<Float64Type>::from(v.clone())),
        Data::Bool(v) => Arc::new(BooleanArray::from(v.clone())),
        Data::Text(v) => Arc::new(StringArray::from_iter_values(v)),
    };
    // Innermost axis first: [channels, partials] is a list of `channels`
    // lists of `partials` values.
    // The length is given, not derived, so that a zero-size axis (a window
    // whose frames have no partials) still has one list per frame.
    for (axis, n) in feature.shape.iter().enumerate().rev() {
        let rows = batch_rows * feature.shape[..axis].iter().product::<usize>();
        let item = Arc::new(Field::new("item", array.data_type().clone(), false));
        array = Arc::new(FixedSizeListArray::try_new_with_length(
            item, *n as i32, array, None, rows,
        )?);
    }
    Ok(array)
}
