//! The dataset's columns: one list of [`Feature`]s from which the Arrow
//! schema, the CSV header, info.json and the statistics are all derived, and
//! the [`Batch`] of frames the writers take.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::ExportError;

/// Element type of a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// Microseconds since the epoch, UTC.
    Timestamp,
    /// 64-bit integer.
    Int64,
    /// 32-bit integer.
    Int32,
    /// 32-bit float.
    Float32,
    /// 64-bit float.
    Float64,
    /// Boolean.
    Bool,
    /// UTF-8 text.
    Text,
}

impl Dtype {
    /// The name in info.json (LeRobot's names where it has them).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Timestamp => "timestamp[us, UTC]",
            Dtype::Int64 => "int64",
            Dtype::Int32 => "int32",
            Dtype::Float32 => "float32",
            Dtype::Float64 => "float64",
            Dtype::Bool => "bool",
            Dtype::Text => "string",
        }
    }

    fn arrow(self) -> DataType {
        match self {
            Dtype::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Dtype::Int64 => DataType::Int64,
            Dtype::Int32 => DataType::Int32,
            Dtype::Float32 => DataType::Float32,
            Dtype::Float64 => DataType::Float64,
            Dtype::Bool => DataType::Boolean,
            Dtype::Text => DataType::Utf8,
        }
    }

    /// Whether stats.json describes it (numbers and booleans as 0/1).
    pub fn numeric(self) -> bool {
        !matches!(self, Dtype::Text | Dtype::Timestamp)
    }
}

/// One column of the dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    /// Column name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape: `[]` for a scalar (info.json says `[1]`, as LeRobot does),
    /// `[n]` or `[channels, partials]` for fixed-size lists.
    pub shape: Vec<usize>,
    /// Names of the elements, per axis (info.json's `names`).
    pub names: Vec<(String, Vec<String>)>,
    /// What it is, for info.json.
    pub description: &'static str,
}

impl Feature {
    fn new(name: &str, dtype: Dtype, description: &'static str) -> Feature {
        Feature {
            name: name.to_string(),
            dtype,
            shape: Vec::new(),
            names: Vec::new(),
            description,
        }
    }

    fn list(mut self, axis: &str, names: Vec<String>) -> Feature {
        self.shape.push(names.len());
        self.names.push((axis.to_string(), names));
        self
    }

    /// Elements per frame.
    pub fn width(&self) -> usize {
        self.shape.iter().product()
    }

    /// The Arrow field: nested non-null fixed-size lists, outer axis first.
    pub fn field(&self) -> Field {
        let mut t = self.dtype.arrow();
        for n in self.shape.iter().rev() {
            t = DataType::FixedSizeList(Arc::new(Field::new("item", t, false)), *n as i32);
        }
        Field::new(&self.name, t, false)
    }

    /// The entry of info.json's `features`.
    pub fn info(&self) -> Value {
        let shape: Vec<usize> = if self.shape.is_empty() {
            vec![1]
        } else {
            self.shape.clone()
        };
        let names = match self.names.as_slice() {
            [] => Value::Null,
            [(_, one)] => json!(one),
            many => Value::Object(
                many.iter()
                    .map(|(axis, names)| (axis.clone(), json!(names)))
                    .collect(),
            ),
        };
        json!({
            "dtype": self.dtype.name(),
            "shape": shape,
            "names": names,
            "description": self.description,
        })
    }

    /// CSV column names: the feature's name, or one per element
    /// (`name.a.b` with the element names of each axis).
    pub fn csv_names(&self) -> Vec<String> {
        let mut out = vec![self.name.clone()];
        for (_, names) in &self.names {
            out = out
                .iter()
                .flat_map(|prefix| names.iter().map(move |n| format!("{prefix}.{n}")))
                .collect();
        }
        out
    }
}

/// The fixed shapes of one export and its features.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Audio channels of the partials.
    pub channels: usize,
    /// Partials per channel.
    pub partials: usize,
    /// Names of the steppers, global index order (from stepper_roles).
    pub steppers: Vec<String>,
    /// Channels of the daemon's per-channel thresholds (its strings).
    pub threshold_channels: usize,
    /// Every column, in file order.
    pub features: Vec<Feature>,
}

/// Index of each feature in [`Layout::features`], in the order
/// [`Layout::new`] makes them.
mod col {
    pub const TIMESTAMP: usize = 0;
    pub const FRAME_INDEX: usize = 1;
    pub const EPISODE_INDEX: usize = 2;
    pub const CONTROLS_ID: usize = 3;
    pub const FREQUENCY: usize = 4;
    pub const AMPLITUDE: usize = 5;
    pub const VOICE_COUNT: usize = 6;
    pub const AMP_SUM: usize = 7;
    pub const STATE: usize = 8;
    pub const ENABLED: usize = 9;
    pub const BUMP_CHECK_ENABLE: usize = 10;
    /// z_up_step, z_down_step.
    pub const STEPS: usize = 11;
    /// tune_rest, x_rest, z_rest, lap_rest.
    pub const RESTS: usize = 13;
    /// adjustment_level, retry_threshold, delta_threshold, z_variance_threshold.
    pub const LEVELS: usize = 17;
    /// voice_count_min, voice_count_max, amp_sum_min, amp_sum_max.
    pub const THRESHOLDS: usize = 21;
    pub const STATE_ID: usize = 25;
    pub const AGE: usize = 26;
    pub const LINKED: usize = 27;
    pub const COUNT: usize = 28;
}

impl Layout {
    /// The layout of an export with these shapes.
    pub fn new(
        channels: usize,
        partials: usize,
        steppers: Vec<String>,
        threshold_channels: usize,
    ) -> Layout {
        let channel_names: Vec<String> = (0..channels).map(|c| format!("channel_{c}")).collect();
        let partial_names: Vec<String> = (0..partials).map(|p| format!("partial_{p}")).collect();
        let string_names: Vec<String> = (0..threshold_channels)
            .map(|c| format!("channel_{c}"))
            .collect();
        let mut f = vec![
            Feature::new(
                "timestamp",
                Dtype::Timestamp,
                "controls.recorded_at of the frame",
            ),
            Feature::new(
                "frame_index",
                Dtype::Int64,
                "position of the frame in the dataset, from 0",
            ),
            Feature::new(
                "episode_index",
                Dtype::Int64,
                "the innermost operation running at the frame's time (meta/episodes.jsonl), or -1",
            ),
            Feature::new(
                "controls_id",
                Dtype::Text,
                "controls.controls_id of the frame",
            ),
            Feature::new(
                "observation.partials.frequency",
                Dtype::Float32,
                "partials.frequency (Hz) by channel and partial_index; 0 for an empty slot",
            )
            .list("channels", channel_names.clone())
            .list("partials", partial_names.clone()),
            Feature::new(
                "observation.partials.amplitude",
                Dtype::Float32,
                "partials.amplitude by channel and partial_index; 0 for an empty slot",
            )
            .list("channels", channel_names.clone())
            .list("partials", partial_names),
            Feature::new(
                "observation.voice_count",
                Dtype::Int32,
                "partials of the frame with amplitude > 0, per channel",
            )
            .list("channels", channel_names.clone()),
            Feature::new(
                "observation.amp_sum",
                Dtype::Float32,
                "sum of the frame's amplitudes, per channel",
            )
            .list("channels", channel_names),
            Feature::new(
                "observation.state",
                Dtype::Int32,
                "machine_state.stepper_positions, global stepper index order",
            )
            .list("steppers", steppers.clone()),
            Feature::new(
                "observation.enabled",
                Dtype::Bool,
                "machine_state.stepper_enabled, global stepper index order",
            )
            .list("steppers", steppers.clone()),
            Feature::new(
                "settings.bump_check_enable",
                Dtype::Bool,
                "machine_state setting",
            ),
        ];
        for name in ["z_up_step", "z_down_step"] {
            f.push(Feature::new(
                &format!("settings.{name}"),
                Dtype::Int32,
                "machine_state setting",
            ));
        }
        for name in ["tune_rest", "x_rest", "z_rest", "lap_rest"] {
            f.push(Feature::new(
                &format!("settings.{name}"),
                Dtype::Float32,
                "machine_state rest timing, seconds",
            ));
        }
        for name in [
            "adjustment_level",
            "retry_threshold",
            "delta_threshold",
            "z_variance_threshold",
        ] {
            f.push(Feature::new(
                &format!("settings.{name}"),
                Dtype::Int32,
                "machine_state setting",
            ));
        }
        for name in [
            "voice_count_min",
            "voice_count_max",
            "amp_sum_min",
            "amp_sum_max",
        ] {
            f.push(
                Feature::new(
                    &format!("thresholds.{name}"),
                    Dtype::Int32,
                    "machine_state per-channel threshold of z_adjust",
                )
                .list("channels", string_names.clone()),
            );
        }
        f.push(Feature::new(
            "machine_state.state_id",
            Dtype::Text,
            "the machine_state row in force at the frame",
        ));
        f.push(Feature::new(
            "machine_state.age",
            Dtype::Float64,
            "frame time minus the state's recorded_at, seconds (negative for a linked state recorded after its frame)",
        ));
        f.push(Feature::new(
            "machine_state.linked",
            Dtype::Bool,
            "true: the state is linked to the frame by controls_id; false: the newest within the tolerance",
        ));
        debug_assert_eq!(f.len(), col::COUNT);
        Layout {
            channels,
            partials,
            steppers,
            threshold_channels,
            features: f,
        }
    }

    /// The Arrow schema of the data files.
    pub fn schema(&self) -> Arc<Schema> {
        Arc::new(Schema::new(
            self.features.iter().map(Feature::field).collect::<Vec<_>>(),
        ))
    }

    /// An empty batch with room for `rows` frames.
    pub fn batch(&self, rows: usize) -> Batch {
        Batch {
            rows: 0,
            columns: self
                .features
                .iter()
                .map(|f| Data::with_capacity(f.dtype, rows * f.width()))
                .collect(),
        }
    }
}

/// The values of one column for the frames of a batch, elements of a frame
/// contiguous (row-major for two axes).
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// Microseconds since the epoch.
    Timestamp(Vec<i64>),
    /// int64 values.
    Int64(Vec<i64>),
    /// int32 values.
    Int32(Vec<i32>),
    /// float32 values.
    Float32(Vec<f32>),
    /// float64 values.
    Float64(Vec<f64>),
    /// Booleans.
    Bool(Vec<bool>),
    /// Text.
    Text(Vec<String>),
}

impl Data {
    fn with_capacity(dtype: Dtype, n: usize) -> Data {
        match dtype {
            Dtype::Timestamp => Data::Timestamp(Vec::with_capacity(n)),
            Dtype::Int64 => Data::Int64(Vec::with_capacity(n)),
            Dtype::Int32 => Data::Int32(Vec::with_capacity(n)),
            Dtype::Float32 => Data::Float32(Vec::with_capacity(n)),
            Dtype::Float64 => Data::Float64(Vec::with_capacity(n)),
            Dtype::Bool => Data::Bool(Vec::with_capacity(n)),
            Dtype::Text => Data::Text(Vec::with_capacity(n)),
        }
    }

    /// Element `i` as a number (booleans 0/1), `None` for text.
    pub fn number(&self, i: usize) -> Option<f64> {
        match self {
            Data::Timestamp(v) | Data::Int64(v) => Some(v[i] as f64),
            Data::Int32(v) => Some(f64::from(v[i])),
            Data::Float32(v) => Some(f64::from(v[i])),
            Data::Float64(v) => Some(v[i]),
            Data::Bool(v) => Some(if v[i] { 1.0 } else { 0.0 }),
            Data::Text(_) => None,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Data::Timestamp(v) | Data::Int64(v) => v.len(),
            Data::Int32(v) => v.len(),
            Data::Float32(v) => v.len(),
            Data::Float64(v) => v.len(),
            Data::Bool(v) => v.len(),
            Data::Text(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Frames ready for a writer: one [`Data`] per feature of the layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Number of frames.
    pub rows: usize,
    /// Per feature, in [`Layout::features`] order.
    pub columns: Vec<Data>,
}

/// The machine_state row in force at a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct StateRow {
    /// state_id.
    pub state_id: String,
    /// recorded_at.
    pub recorded_at: DateTime<Utc>,
    /// Linked by controls_id (else by time).
    pub linked: bool,
    /// stepper_positions.
    pub positions: Vec<i32>,
    /// stepper_enabled.
    pub enabled: Vec<bool>,
    /// bump_check_enable.
    pub bump_check_enable: bool,
    /// z_up_step, z_down_step.
    pub steps: [i32; 2],
    /// tune_rest, x_rest, z_rest, lap_rest.
    pub rests: [f32; 4],
    /// adjustment_level, retry_threshold, delta_threshold, z_variance_threshold.
    pub levels: [i32; 4],
    /// voice_count_min, voice_count_max, amp_sum_min, amp_sum_max.
    pub thresholds: [Vec<i32>; 4],
}

/// One frame as read: its controls row, partials (parallel arrays in
/// channel, partial_index order) and the state in force.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameRow {
    /// controls_id as text.
    pub controls_id: String,
    /// controls.recorded_at.
    pub at: DateTime<Utc>,
    /// partials.channel.
    pub channel: Vec<i32>,
    /// partials.partial_index.
    pub partial: Vec<i32>,
    /// partials.frequency.
    pub frequency: Vec<f32>,
    /// partials.amplitude.
    pub amplitude: Vec<f32>,
    /// The state in force.
    pub state: StateRow,
}

impl Batch {
    /// Appends `row` as frame `frame_index` of episode `episode_index`.
    /// A slot with no partials row is an empty slot (0, 0), as audmon writes
    /// empty slots; a partial outside the layout's shape, or a state whose
    /// arrays differ in length from the layout's, is an error naming the row.
    pub fn push(
        &mut self,
        layout: &Layout,
        row: &FrameRow,
        frame_index: i64,
        episode_index: i64,
    ) -> Result<(), ExportError> {
        let (ch, np) = (layout.channels, layout.partials);
        let st = &row.state;
        let shape_error = |what: String| {
            ExportError::Shape(format!(
                "{what}; the dataset's shapes come from the window's first frame and the \
                 host's stepper_roles: export the periods before and after the change \
                 separately (--since/--until)"
            ))
        };
        if st.positions.len() != layout.steppers.len() || st.enabled.len() != layout.steppers.len()
        {
            return Err(shape_error(format!(
                "machine_state {} has {} stepper positions and {} enable flags, the dataset has {} steppers",
                st.state_id,
                st.positions.len(),
                st.enabled.len(),
                layout.steppers.len()
            )));
        }
        if let Some(t) = st
            .thresholds
            .iter()
            .find(|t| t.len() != layout.threshold_channels)
        {
            return Err(shape_error(format!(
                "machine_state {} has per-channel thresholds for {} channels, the dataset has {}",
                st.state_id,
                t.len(),
                layout.threshold_channels
            )));
        }
        let mut freq = vec![0f32; ch * np];
        let mut amp = vec![0f32; ch * np];
        for i in 0..row.channel.len() {
            let (c, p) = (row.channel[i], row.partial[i]);
            let slot = usize::try_from(c)
                .ok()
                .zip(usize::try_from(p).ok())
                .filter(|(c, p)| *c < ch && *p < np);
            let Some((c, p)) = slot else {
                return Err(shape_error(format!(
                    "frame {} at {} has a partial at channel {c}, partial_index {p}, outside \
                     the dataset's {ch} channels × {np} partials",
                    row.controls_id,
                    row.at.to_rfc3339()
                )));
            };
            freq[c * np + p] = row.frequency[i];
            amp[c * np + p] = row.amplitude[i];
        }
        let age = (row.at - st.recorded_at)
            .num_microseconds()
            .map_or(f64::NAN, |us| us as f64 / 1e6);
        for (k, data) in self.columns.iter_mut().enumerate() {
            match (k, data) {
                (col::TIMESTAMP, Data::Timestamp(v)) => v.push(row.at.timestamp_micros()),
                (col::FRAME_INDEX, Data::Int64(v)) => v.push(frame_index),
                (col::EPISODE_INDEX, Data::Int64(v)) => v.push(episode_index),
                (col::CONTROLS_ID, Data::Text(v)) => v.push(row.controls_id.clone()),
                (col::FREQUENCY, Data::Float32(v)) => v.extend_from_slice(&freq),
                (col::AMPLITUDE, Data::Float32(v)) => v.extend_from_slice(&amp),
                (col::VOICE_COUNT, Data::Int32(v)) => v.extend(
                    amp.chunks(np.max(1))
                        .take(ch)
                        .map(|c| c.iter().filter(|a| **a > 0.0).count() as i32),
                ),
                (col::AMP_SUM, Data::Float32(v)) => v.extend(
                    amp.chunks(np.max(1))
                        .take(ch)
                        .map(|c| c.iter().sum::<f32>()),
                ),
                (col::STATE, Data::Int32(v)) => v.extend_from_slice(&st.positions),
                (col::ENABLED, Data::Bool(v)) => v.extend_from_slice(&st.enabled),
                (col::BUMP_CHECK_ENABLE, Data::Bool(v)) => v.push(st.bump_check_enable),
                (k, Data::Int32(v)) if (col::STEPS..col::STEPS + 2).contains(&k) => {
                    v.push(st.steps[k - col::STEPS])
                }
                (k, Data::Float32(v)) if (col::RESTS..col::RESTS + 4).contains(&k) => {
                    v.push(st.rests[k - col::RESTS])
                }
                (k, Data::Int32(v)) if (col::LEVELS..col::LEVELS + 4).contains(&k) => {
                    v.push(st.levels[k - col::LEVELS])
                }
                (k, Data::Int32(v)) if (col::THRESHOLDS..col::THRESHOLDS + 4).contains(&k) => {
                    v.extend_from_slice(&st.thresholds[k - col::THRESHOLDS])
                }
                (col::STATE_ID, Data::Text(v)) => v.push(st.state_id.clone()),
                (col::AGE, Data::Float64(v)) => v.push(age),
                (col::LINKED, Data::Bool(v)) => v.push(st.linked),
                (k, _) => unreachable!("column {k} does not match the layout"),
            }
        }
        self.rows += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_names_flatten_axes_row_major() {
        let l = Layout::new(2, 3, vec!["x".into(), "z_in_0".into()], 1);
        let f = &l.features[col::FREQUENCY];
        assert_eq!(f.width(), 6);
        let names = f.csv_names();
        assert_eq!(names.len(), 6);
        assert_eq!(
            names[0],
            "observation.partials.frequency.channel_0.partial_0"
        );
        assert_eq!(
            names[4],
            "observation.partials.frequency.channel_1.partial_1"
        );
        assert_eq!(
            l.features[col::STATE].csv_names()[1],
            "observation.state.z_in_0"
        );
        assert_eq!(l.features[col::AGE].csv_names(), ["machine_state.age"]);
        assert_eq!(l.features.len(), col::COUNT);
        assert_eq!(l.features[col::LINKED].name, "machine_state.linked");
        assert_eq!(
            l.features[col::THRESHOLDS].name,
            "thresholds.voice_count_min"
        );
    }
}
