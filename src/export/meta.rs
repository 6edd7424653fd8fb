//! The meta/ files of a dataset: info.json (format version, host, window,
//! counts, every feature's dtype, shape and names), episodes.jsonl and
//! stats.json. info.json is written last, through a temporary file and a
//! rename: a directory without it is an export that did not finish.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::args::Plan;
use super::episodes::Episodes;
use super::features::Layout;
use super::query::Counts;
use super::stats::Stats;
use super::{ExportError, FORMAT_VERSION};

/// info.json of an export.
pub fn info(
    plan: &Plan,
    layout: &Layout,
    counts: &Counts,
    episodes: usize,
    files: &[PathBuf],
) -> Value {
    let features: Map<String, Value> = layout
        .features
        .iter()
        .map(|f| (f.name.clone(), f.info()))
        .collect();
    let files: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(&plan.out).unwrap_or(f).display().to_string())
        .collect();
    json!({
        "format_version": FORMAT_VERSION,
        "codebase_version": format!("stringdriverd {}", env!("CARGO_PKG_VERSION")),
        "host": plan.host,
        "window": {
            "since": plan.since.to_rfc3339(),
            "until": plan.until.to_rfc3339(),
            "bounds": "[since, until)",
        },
        "tolerance_s": plan.tolerance.as_secs_f64(),
        "empty": counts.frames == 0,
        "counts": {
            "frames": counts.frames,
            "dropped": counts.dropped,
            "episodes": episodes,
            "frames_linked_by_controls_id": counts.linked,
            "frames_linked_by_time": counts.by_time,
            "frames_with_missing_partials": counts.incomplete_partials,
        },
        "total_frames": counts.frames,
        "total_episodes": episodes,
        "data_format": plan.format,
        "data_path": format!("data/chunk-{{chunk_index:03d}}/file-{{file_index:03d}}.{}", plan.format.ext()),
        "files": files,
        "frames_per_file": plan.frames_per_file,
        "row_group_frames": super::parquet_out::ROW_GROUP_FRAMES,
        "shapes": {
            "channels": layout.channels,
            "partials": layout.partials,
            "steppers": layout.steppers.len(),
            "threshold_channels": layout.threshold_channels,
        },
        "episodes": "meta/episodes.jsonl: one operation per line; a frame's episode_index is \
                     the innermost operation running at its time (-1: none); parent_episode_index \
                     is the innermost other operation whose span holds it",
        "features": features,
    })
}

/// Writes meta/episodes.jsonl, meta/stats.json and, last, meta/info.json.
pub fn write(
    plan: &Plan,
    layout: &Layout,
    counts: &Counts,
    episodes: &Episodes,
    stats: &Stats,
    files: &[PathBuf],
) -> Result<(), ExportError> {
    let dir = plan.out.join("meta");
    std::fs::create_dir_all(&dir).map_err(|e| ExportError::write(&dir, e))?;
    write_file(&dir.join("episodes.jsonl"), episodes.jsonl().as_bytes())?;
    let stats = pretty(&stats.json(), &dir)?;
    write_file(&dir.join("stats.json"), &stats)?;
    let info = pretty(&info(plan, layout, counts, episodes.len(), files), &dir)?;
    let tmp = dir.join("info.json.tmp");
    write_file(&tmp, &info)?;
    let path = dir.join("info.json");
    std::fs::rename(&tmp, &path).map_err(|e| ExportError::write(&path, e))
}

fn pretty(v: &Value, dir: &Path) -> Result<Vec<u8>, ExportError> {
    let mut bytes = serde_json::to_vec_pretty(v).map_err(|e| ExportError::write(dir, e))?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    std::fs::write(path, bytes).map_err(|e| ExportError::write(path, e))
}
