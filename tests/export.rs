//! `stringdriverd export` against a real PostgreSQL: generated recordings
//! (tests/common/recordings.rs) exported by the binary and checked row by
//! row against an as-of join computed here in SQL, independently of the
//! exporter's query; the counts of info.json; episodes of nested operations;
//! an empty window; CSV; bad input; and the dataset loaded by pyarrow
//! (scripts/check_dataset.py).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType,
};
use arrow_array::RecordBatch;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use common::recordings::{self, Recording};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{json, Value};

/// The generator writes what it says, deterministically: the same
/// parameters give the same rows.
#[tokio::test]
async fn generated_recording_has_the_rows_it_reports() {
    let rec = Recording::small("sd-gen", 40, 7);
    let (_db, client, done) = recordings::database_with(std::slice::from_ref(&rec)).await;
    let done = &done[0];
    assert_eq!(done.frames, 40);
    assert_eq!(done.partials, 40 * 3 * 4);
    assert_eq!(done.linked_states, 8);
    assert_eq!(done.operations, 2 * 5);
    let count = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(sql, &[])
                .await
                .expect("count")
                .get::<_, i64>(0)
        }
    };
    assert_eq!(count("SELECT count(*) FROM controls").await, 40);
    assert_eq!(
        count("SELECT count(*) FROM machine_state WHERE controls_id IS NOT NULL").await,
        8
    );
    assert_eq!(count("SELECT count(*) FROM stepper_roles").await, 10);
    assert_eq!(
        recordings::frame_partials(&rec, 3),
        recordings::frame_partials(&rec, 3)
    );
}

/// The host exported in most tests: timer snapshots with a 6 s hole, a
/// linked snapshot every 13 frames (3.25 s), so that frames inside the hole
/// more than 2 s after a snapshot have none in force and are dropped.
fn main_recording() -> Recording {
    let mut rec = Recording::small("sd-export-a", 400, 1);
    rec.link_every = 13;
    rec.state_gaps = vec![(Duration::seconds(20), Duration::seconds(6))];
    rec
}

/// Another host over the same time, whose rows must never appear.
fn other_recording() -> Recording {
    let mut rec = Recording::small("sd-export-b", 300, 2);
    rec.link_every = 3;
    rec
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Runs `stringdriverd export` with a configuration whose database is `url`.
async fn export(dir: &Path, url: &str, args: Vec<String>) -> Output {
    let cfg = common::demo_config(dir, url);
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_stringdriverd"))
            .arg("export")
            .arg("--config")
            .arg(&cfg)
            .args(&args)
            .env_remove("DATABASE_URL")
            .output()
            .expect("export runs")
    })
    .await
    .expect("join")
}

fn window_args(host: &str, since: DateTime<Utc>, until: DateTime<Utc>, out: &Path) -> Vec<String> {
    vec![
        "--host".into(),
        host.into(),
        "--since".into(),
        rfc3339(since),
        "--until".into(),
        rfc3339(until),
        "--out".into(),
        out.display().to_string(),
    ]
}

fn ok(o: &Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "export failed: {out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every row of every data file listed in info.json, as one batch per file.
fn read_parquet(out: &Path, info: &Value) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    for f in info["files"].as_array().expect("files") {
        let path = out.join(f.as_str().expect("file name"));
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("parquet")
            .build()
            .expect("reader");
        for b in reader {
            batches.push(b.expect("batch"));
        }
    }
    batches
}

/// The columns of the export as plain values, one entry per frame.
#[derive(Debug, Default)]
struct Frames {
    controls_id: Vec<String>,
    timestamp: Vec<i64>,
    frame_index: Vec<i64>,
    episode_index: Vec<i64>,
    state_id: Vec<String>,
    linked: Vec<bool>,
    age: Vec<f64>,
    state: Vec<Vec<i32>>,
    enabled: Vec<Vec<bool>>,
    z_up_step: Vec<i32>,
    tune_rest: Vec<f32>,
    voice_count_min: Vec<Vec<i32>>,
    frequency: Vec<Vec<f32>>,
    amplitude: Vec<Vec<f32>>,
    voice_count: Vec<Vec<i32>>,
}

/// The flat values of row `i` of a (possibly nested) fixed-size list column.
fn list_row<T: arrow_array::ArrowPrimitiveType>(
    b: &RecordBatch,
    name: &str,
    i: usize,
) -> Vec<T::Native> {
    let mut a = b
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no {name}"))
        .clone();
    let mut width = 1;
    while let Some(l) = a.as_fixed_size_list_opt() {
        width *= l.value_length() as usize;
        a = l.values().clone();
    }
    a.as_primitive::<T>().values()[i * width..(i + 1) * width].to_vec()
}

fn frames_of(batches: &[RecordBatch]) -> Frames {
    let mut f = Frames::default();
    for b in batches {
        let col = |n: &str| {
            b.column_by_name(n)
                .unwrap_or_else(|| panic!("no column {n}"))
                .clone()
        };
        for i in 0..b.num_rows() {
            f.controls_id
                .push(col("controls_id").as_string::<i32>().value(i).to_string());
            f.timestamp.push(
                col("timestamp")
                    .as_primitive::<TimestampMicrosecondType>()
                    .value(i),
            );
            f.frame_index
                .push(col("frame_index").as_primitive::<Int64Type>().value(i));
            f.episode_index
                .push(col("episode_index").as_primitive::<Int64Type>().value(i));
            f.state_id.push(
                col("machine_state.state_id")
                    .as_string::<i32>()
                    .value(i)
                    .to_string(),
            );
            f.linked
                .push(col("machine_state.linked").as_boolean().value(i));
            f.age.push(
                col("machine_state.age")
                    .as_primitive::<Float64Type>()
                    .value(i),
            );
            f.state
                .push(list_row::<Int32Type>(b, "observation.state", i));
            let en = col("observation.enabled");
            let en = en.as_fixed_size_list().value(i);
            let en = en.as_boolean();
            f.enabled.push((0..en.len()).map(|k| en.value(k)).collect());
            f.z_up_step.push(
                col("settings.z_up_step")
                    .as_primitive::<Int32Type>()
                    .value(i),
            );
            f.tune_rest.push(
                col("settings.tune_rest")
                    .as_primitive::<Float32Type>()
                    .value(i),
            );
            f.voice_count_min
                .push(list_row::<Int32Type>(b, "thresholds.voice_count_min", i));
            f.frequency.push(list_row::<Float32Type>(
                b,
                "observation.partials.frequency",
                i,
            ));
            f.amplitude.push(list_row::<Float32Type>(
                b,
                "observation.partials.amplitude",
                i,
            ));
            f.voice_count
                .push(list_row::<Int32Type>(b, "observation.voice_count", i));
        }
    }
    f
}

/// The as-of join of the window computed in SQL, written differently from
/// the exporter's query (one join over every candidate state, ranked by a
/// window function): per frame of the host, the state linked by
/// controls_id, else the newest of the host at most 2 s before; and the
/// innermost operation running then.
const EXPECTED: &str = "
WITH f AS (
    SELECT controls_id, host, recorded_at FROM controls
    WHERE host = $1 AND recorded_at >= $2 AND recorded_at < $3
), cand AS (
    SELECT f.controls_id, ms.state_id, ms.recorded_at AS ms_at,
           (ms.controls_id IS NOT DISTINCT FROM f.controls_id) AS linked
    FROM f JOIN machine_state ms ON ms.host = f.host
     AND (ms.controls_id = f.controls_id
          OR (ms.recorded_at BETWEEN f.recorded_at - interval '2 seconds' AND f.recorded_at))
), ranked AS (
    SELECT *, row_number() OVER (PARTITION BY controls_id
                                 ORDER BY linked DESC, ms_at DESC, state_id DESC) AS rn
    FROM cand
)
SELECT f.controls_id::text, f.recorded_at, r.state_id::text, r.linked,
       extract(epoch FROM f.recorded_at - r.ms_at)::float8 AS age,
       ms.stepper_positions, ms.stepper_enabled, ms.z_up_step, ms.tune_rest, ms.voice_count_min,
       (SELECT array_agg(p.frequency ORDER BY p.channel, p.partial_index) FROM partials p
         WHERE p.controls_id = f.controls_id) AS freq,
       (SELECT array_agg(p.amplitude ORDER BY p.channel, p.partial_index) FROM partials p
         WHERE p.controls_id = f.controls_id) AS amp,
       (SELECT o.operation_id::text FROM operations o
         WHERE o.host = f.host AND o.recorded_at <= f.recorded_at
           AND (f.recorded_at < o.completed_at
                OR (o.completed_at IS NULL AND o.operation_status = 'started'))
         ORDER BY o.recorded_at DESC, o.completed_at ASC NULLS LAST LIMIT 1) AS op
FROM f
LEFT JOIN ranked r ON r.controls_id = f.controls_id AND r.rn = 1
LEFT JOIN machine_state ms ON ms.state_id = r.state_id
ORDER BY f.recorded_at, f.controls_id";

/// One row of [`EXPECTED`].
struct Expected {
    controls_id: String,
    at: DateTime<Utc>,
    state_id: Option<String>,
    linked: Option<bool>,
    age: Option<f64>,
    positions: Option<Vec<i32>>,
    enabled: Option<Vec<bool>>,
    z_up_step: Option<i32>,
    tune_rest: Option<f32>,
    voice_count_min: Option<Vec<i32>>,
    freq: Option<Vec<f32>>,
    amp: Option<Vec<f32>>,
    op: Option<String>,
}

async fn expected(
    client: &tokio_postgres::Client,
    host: &str,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Vec<Expected> {
    client
        .query(EXPECTED, &[&host, &since, &until])
        .await
        .expect("expected frames")
        .iter()
        .map(|r| Expected {
            controls_id: r.get(0),
            at: r.get(1),
            state_id: r.get(2),
            linked: r.get(3),
            age: r.get(4),
            positions: r.get(5),
            enabled: r.get(6),
            z_up_step: r.get(7),
            tune_rest: r.get(8),
            voice_count_min: r.get(9),
            freq: r.get(10),
            amp: r.get(11),
            op: r.get(12),
        })
        .collect()
}

/// The episodes.jsonl lines.
fn episodes(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("meta/episodes.jsonl"))
        .expect("episodes.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("episode line"))
        .collect()
}

#[tokio::test]
async fn exported_frames_match_the_as_of_join_computed_in_sql_row_by_row() {
    let (a, b) = (main_recording(), other_recording());
    let (db, client, _) = recordings::database_with(&[a.clone(), b]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("dataset");
    // From inside the first sweep to before the last frames: operations
    // that started before the window are episodes too.
    let since = a.start + Duration::seconds(7);
    let until = a.end() - Duration::seconds(4);
    let mut args = window_args(&a.host, since, until, &out);
    args.extend(["--frames-per-file".to_string(), "97".to_string()]);
    let stdout = ok(&export(dir.path(), &db.url(), args).await);

    let want = expected(&client, &a.host, since, until).await;
    let info = read_json(&out.join("meta/info.json"));
    let got = frames_of(&read_parquet(&out, &info));
    let kept: Vec<&Expected> = want.iter().filter(|e| e.state_id.is_some()).collect();
    let dropped = want.len() - kept.len();
    assert!(
        dropped > 0,
        "the recording must have frames with no state in force"
    );
    assert!(kept.iter().any(|e| e.linked == Some(true)));
    assert!(kept.iter().any(|e| e.linked == Some(false)));

    // The counts of info.json are true.
    assert_eq!(info["counts"]["frames"], json!(kept.len()), "{info}");
    assert_eq!(info["counts"]["dropped"], json!(dropped));
    assert_eq!(
        info["counts"]["frames_linked_by_controls_id"],
        json!(kept.iter().filter(|e| e.linked == Some(true)).count())
    );
    assert_eq!(info["host"], json!(a.host));
    assert_eq!(info["empty"], json!(false));
    assert!(
        stdout.contains(&format!("dropped {dropped} frames")),
        "{stdout}"
    );
    // 97 frames a file.
    assert_eq!(
        info["files"].as_array().expect("files").len(),
        kept.len().div_ceil(97)
    );
    assert_eq!(info["files"][0], json!("data/chunk-000/file-000.parquet"));
    assert_eq!(
        info["shapes"],
        json!({"channels": 3, "partials": 4, "steppers": 10, "threshold_channels": 3})
    );
    assert_eq!(
        info["features"]["observation.state"]["names"],
        json!([
            "x", "z_in_0", "z_out_0", "z_in_1", "z_out_1", "z_in_2", "z_out_2", "tuner_0",
            "tuner_1", "tuner_2"
        ])
    );
    assert_eq!(
        info["features"]["observation.partials.frequency"]["shape"],
        json!([3, 4])
    );

    // Row by row.
    let eps = episodes(&out);
    let episode_of: HashMap<String, i64> = eps
        .iter()
        .map(|e| {
            (
                e["operation_id"].as_str().expect("id").to_string(),
                e["episode_index"].as_i64().expect("index"),
            )
        })
        .collect();
    assert_eq!(got.controls_id.len(), kept.len());
    for (i, e) in kept.iter().enumerate() {
        let ctx = format!("frame {i} ({} at {})", e.controls_id, e.at);
        assert_eq!(got.controls_id[i], e.controls_id, "{ctx}");
        assert_eq!(got.timestamp[i], e.at.timestamp_micros(), "{ctx}");
        assert_eq!(got.frame_index[i], i as i64, "{ctx}");
        assert_eq!(Some(&got.state_id[i]), e.state_id.as_ref(), "{ctx}");
        assert_eq!(Some(got.linked[i]), e.linked, "{ctx}");
        assert!(
            (got.age[i] - e.age.expect("age")).abs() < 1e-6,
            "{ctx}: age {}",
            got.age[i]
        );
        assert_eq!(Some(&got.state[i]), e.positions.as_ref(), "{ctx}");
        assert_eq!(Some(&got.enabled[i]), e.enabled.as_ref(), "{ctx}");
        assert_eq!(Some(got.z_up_step[i]), e.z_up_step, "{ctx}");
        assert_eq!(Some(got.tune_rest[i]), e.tune_rest, "{ctx}");
        assert_eq!(
            Some(&got.voice_count_min[i]),
            e.voice_count_min.as_ref(),
            "{ctx}"
        );
        assert_eq!(Some(&got.frequency[i]), e.freq.as_ref(), "{ctx}");
        assert_eq!(Some(&got.amplitude[i]), e.amp.as_ref(), "{ctx}");
        let voices: Vec<i32> = got.amplitude[i]
            .chunks(4)
            .map(|c| c.iter().filter(|a| **a > 0.0).count() as i32)
            .collect();
        assert_eq!(got.voice_count[i], voices, "{ctx}");
        let want_episode = e.op.as_ref().map_or(-1, |op| episode_of[op]);
        assert_eq!(got.episode_index[i], want_episode, "{ctx}");
    }
    // Frames right after the audio pause are linked by time.
    let pause = a.frame_time(a.frames / 2);
    let after = kept
        .iter()
        .position(|e| e.at == pause)
        .expect("frame after the pause");
    assert_eq!(got.linked[after], a.frames / 2 % 13 == 0);
}

#[tokio::test]
async fn episodes_are_the_operations_of_the_window_with_their_nesting() {
    let a = main_recording();
    let (db, client, _) = recordings::database_with(std::slice::from_ref(&a)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("dataset");
    ok(&export(
        dir.path(),
        &db.url(),
        window_args(&a.host, a.start, a.end() + Duration::seconds(1), &out),
    )
    .await);
    let eps = episodes(&out);
    let ops = client
        .query(
            "SELECT operation_id::text, operation_type::text, operation_status::text FROM operations
             WHERE host = $1 ORDER BY recorded_at, completed_at DESC NULLS FIRST",
            &[&a.host],
        )
        .await
        .expect("operations");
    assert_eq!(eps.len(), ops.len());
    let info = read_json(&out.join("meta/info.json"));
    assert_eq!(info["counts"]["episodes"], json!(ops.len()));
    for (e, o) in eps.iter().zip(&ops) {
        assert_eq!(e["operation_id"], json!(o.get::<_, String>(0)));
        assert_eq!(e["operation_type"], json!(o.get::<_, String>(1)));
        assert_eq!(e["operation_status"], json!(o.get::<_, String>(2)));
    }
    // Per sweep: the sweep, z_adjust, z_adjust (failed) holding a
    // bump_check, z_adjust: parents by time.
    let parents: Vec<Value> = eps
        .iter()
        .map(|e| e["parent_episode_index"].clone())
        .collect();
    assert_eq!(
        parents,
        [
            json!(null),
            json!(0),
            json!(0),
            json!(2),
            json!(0),
            json!(null),
            json!(5),
            json!(5),
            json!(7),
            json!(5)
        ]
    );
    assert_eq!(
        eps[2]["message"],
        json!("retry threshold reached on string 1")
    );
    assert_eq!(eps[5]["operation_status"], json!("started"));
    assert_eq!(eps[5]["end"], json!(null));
    // Lengths count the frames whose innermost episode it is.
    let got = frames_of(&read_parquet(&out, &info));
    for (k, e) in eps.iter().enumerate() {
        let n = got.episode_index.iter().filter(|&&x| x == k as i64).count();
        assert_eq!(e["length"], json!(n), "episode {k}");
    }
    assert!(
        got.episode_index.contains(&3),
        "the bump_check holds frames"
    );
    assert!(got.episode_index.contains(&-1), "frames between sweeps");
}

#[tokio::test]
async fn an_empty_window_writes_a_valid_empty_dataset_and_says_so() {
    let a = main_recording();
    let (db, _client, _) = recordings::database_with(std::slice::from_ref(&a)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("empty");
    let since = a.start - Duration::hours(2);
    let stdout = ok(&export(
        dir.path(),
        &db.url(),
        window_args(&a.host, since, since + Duration::hours(1), &out),
    )
    .await);
    assert!(stdout.contains("empty window"), "{stdout}");
    let info = read_json(&out.join("meta/info.json"));
    assert_eq!(info["empty"], json!(true));
    assert_eq!(info["counts"]["frames"], json!(0));
    assert_eq!(info["counts"]["dropped"], json!(0));
    assert_eq!(info["counts"]["episodes"], json!(0));
    let batches = read_parquet(&out, &info);
    assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);
    assert!(out.join("data/chunk-000/file-000.parquet").is_file());
    let stats = read_json(&out.join("meta/stats.json"));
    assert_eq!(stats["observation.state"]["count"], json!(0));
    assert_eq!(
        std::fs::read_to_string(out.join("meta/episodes.jsonl")).expect("episodes"),
        ""
    );
    check_dataset(&out, &json!({"frames": 0, "samples": []}));
}

#[tokio::test]
async fn csv_format_writes_one_column_per_element_with_the_same_values() {
    let a = main_recording();
    let (db, _client, _) = recordings::database_with(std::slice::from_ref(&a)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (pq_out, csv_out) = (dir.path().join("pq"), dir.path().join("csv"));
    let until = a.start + Duration::seconds(30);
    ok(&export(
        dir.path(),
        &db.url(),
        window_args(&a.host, a.start, until, &pq_out),
    )
    .await);
    let mut args = window_args(&a.host, a.start, until, &csv_out);
    // The configuration names another database: --database-url wins.
    args.extend([
        "--format".to_string(),
        "csv".to_string(),
        "--database-url".to_string(),
        db.url(),
    ]);
    let cfg_dir = tempfile::tempdir().expect("tempdir");
    ok(&export(
        cfg_dir.path(),
        "postgres://postgres@127.0.0.1:1/nothing",
        args,
    )
    .await);

    let info = read_json(&csv_out.join("meta/info.json"));
    assert_eq!(info["data_format"], json!("csv"));
    let text = std::fs::read_to_string(csv_out.join("data/chunk-000/file-000.csv")).expect("csv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(json!(rows.len()), info["counts"]["frames"]);
    // 4 scalars, 2 × 12 partials, 2 × 3 per channel, 2 × 10 steppers,
    // 11 settings, 4 × 3 thresholds, 3 about the state.
    assert_eq!(header.len(), 4 + 24 + 6 + 20 + 11 + 12 + 3);
    assert!(rows.iter().all(|r| r.len() == header.len()));
    let at = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no {name}"))
    };
    let pinfo = read_json(&pq_out.join("meta/info.json"));
    let p = frames_of(&read_parquet(&pq_out, &pinfo));
    assert_eq!(p.controls_id.len(), rows.len());
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r[at("controls_id")], p.controls_id[i]);
        assert_eq!(r[at("machine_state.state_id")], p.state_id[i]);
        assert_eq!(
            r[at("observation.state.z_out_1")]
                .parse::<i32>()
                .expect("int"),
            p.state[i][4]
        );
        let f: f32 = r[at("observation.partials.frequency.channel_2.partial_1")]
            .parse()
            .expect("float");
        assert_eq!(f, p.frequency[i][2 * 4 + 1]);
        let t: DateTime<Utc> = r[at("timestamp")].parse().expect("timestamp");
        assert_eq!(t.timestamp_micros(), p.timestamp[i]);
    }
}

/// Runs scripts/check_dataset.py on `out` with `expect`, and fails with its
/// output if it finds anything.
fn check_dataset(out: &Path, expect: &Value) {
    let file = out.parent().expect("parent").join(format!(
        "{}-expect.json",
        out.file_name().expect("name").to_string_lossy()
    ));
    std::fs::write(&file, expect.to_string()).expect("write expectations");
    let script: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_dataset.py");
    let o = Command::new("python3")
        .arg(&script)
        .arg(out)
        .arg(&file)
        .output()
        .expect("python3 runs (pyarrow: scripts/ensure-test-tools.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "check_dataset.py: {text}");
    assert!(text.contains("dataset ok"), "{text}");
}

#[tokio::test]
async fn pyarrow_loads_the_dataset_with_its_schema_shapes_and_values_from_postgresql() {
    let a = main_recording();
    let (db, client, _) = recordings::database_with(std::slice::from_ref(&a)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("dataset");
    let until = a.end() + Duration::seconds(1);
    let mut args = window_args(&a.host, a.start, until, &out);
    args.extend(["--frames-per-file".to_string(), "150".to_string()]);
    ok(&export(dir.path(), &db.url(), args).await);
    let want: Vec<Expected> = expected(&client, &a.host, a.start, until)
        .await
        .into_iter()
        .filter(|e| e.state_id.is_some())
        .collect();
    let n = want.len();
    let samples: Vec<Value> = [0, 1, n / 3, n / 2, n - 1]
        .iter()
        .map(|&i| {
            let e = &want[i];
            let freq = e.freq.as_ref().expect("freq");
            let matrix: Vec<Vec<f32>> = freq.chunks(4).map(<[f32]>::to_vec).collect();
            json!({"frame_index": i, "values": {
                "controls_id": e.controls_id,
                "timestamp": rfc3339(e.at),
                "machine_state.state_id": e.state_id,
                "machine_state.linked": e.linked,
                "observation.state": e.positions,
                "observation.enabled": e.enabled,
                "settings.tune_rest": e.tune_rest,
                "thresholds.voice_count_min": e.voice_count_min,
                "observation.partials.frequency": matrix,
            }})
        })
        .collect();
    check_dataset(
        &out,
        &json!({
            "frames": n,
            "shapes": {"channels": 3, "partials": 4, "steppers": 10, "threshold_channels": 3},
            "samples": samples,
        }),
    );
}

#[tokio::test]
async fn bad_input_gets_an_error_naming_what_is_wrong() {
    let a = Recording::small("sd-export-bad", 20, 3);
    let (db, _client, _) = recordings::database_with(std::slice::from_ref(&a)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let fails = |o: Output| {
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let (s, u) = (a.start, a.end() + Duration::seconds(1));

    let err = fails(
        export(
            dir.path(),
            &db.url(),
            window_args(&a.host, u, s, &dir.path().join("x")),
        )
        .await,
    );
    assert!(
        err.contains("--since") && err.contains("not before --until"),
        "{err}"
    );

    let err = fails(
        export(
            dir.path(),
            &db.url(),
            window_args("sd-no-such-host", s, u, &dir.path().join("y")),
        )
        .await,
    );
    assert!(
        err.contains("`sd-no-such-host`") && err.contains("sd-export-bad"),
        "{err}"
    );

    let full = dir.path().join("full");
    std::fs::create_dir_all(&full).expect("mkdir");
    std::fs::write(full.join("old.parquet"), b"x").expect("write");
    let err = fails(export(dir.path(), &db.url(), window_args(&a.host, s, u, &full)).await);
    assert!(err.contains("is not empty"), "{err}");

    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("write");
    let err = fails(export(dir.path(), &db.url(), window_args(&a.host, s, u, &file)).await);
    assert!(err.contains("--out") && err.contains("a-file"), "{err}");

    let mut args = window_args(&a.host, s, u, &dir.path().join("z"));
    args.extend(["--tolerance".to_string(), "2 days".to_string()]);
    let err = fails(export(dir.path(), &db.url(), args).await);
    assert!(err.contains("--tolerance"), "{err}");
}
