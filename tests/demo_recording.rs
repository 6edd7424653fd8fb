//! What the demo records with a database: the simulated audmon's `controls`
//! and `partials` rows beside the daemon's `machine_state`, linked by
//! `controls_id` as on a machine (issue 14 item 3).

mod common;

use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};

use stringdriverd::sim::audmon_db;
use tokio_util::sync::CancellationToken;

/// Channels and partials per channel of the demo's simulated audmon.
const CHANNELS: i64 = 6;
const PARTIALS: i64 = stringdriverd::demo::PARTIALS as i64;

#[tokio::test]
async fn a_demo_run_records_audmon_frames_linked_to_its_snapshots_and_reports_them() {
    let db = common::pg::TestDb::create().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = common::demo_config(dir.path(), "postgres://postgres@127.0.0.1:1/nothing");
    let url = db.url();
    let o = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_stringdriverd"))
            .args(["demo", "--seconds", "5", "--speed-scale", "5"])
            .arg("--database-url")
            .arg(&url)
            .arg("--config")
            .arg(&cfg)
            .env_remove("DATABASE_URL")
            .env("NO_COLOR", "1")
            .output()
            .expect("demo runs")
    })
    .await
    .expect("join");
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        out.contains("audmon frames"),
        "the summary counts them: {out}"
    );

    let client = db.client().await;
    let one = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .get::<_, i64>(0)
        }
    };
    let controls = one("SELECT count(*) FROM controls WHERE host = 'stringdriver-demo'").await;
    assert!(controls > 0, "{out}");
    assert_eq!(one("SELECT count(*) FROM controls").await, controls);
    // Every frame carries every slot of the feed: channels × partials rows,
    // channel 0..6 and partial_index 0..12 each once.
    let uneven = one(
        "SELECT count(*) FROM controls c WHERE (SELECT count(*) FROM partials p \
         WHERE p.controls_id = c.controls_id) <> 72 \
         OR (SELECT count(DISTINCT (p.channel, p.partial_index)) FROM partials p \
         WHERE p.controls_id = c.controls_id AND p.channel BETWEEN 0 AND 5 \
         AND p.partial_index BETWEEN 0 AND 11) <> 72",
    )
    .await;
    assert_eq!(uneven, 0);
    assert_eq!(
        one("SELECT count(*) FROM partials").await,
        controls * CHANNELS * PARTIALS
    );
    // Some sound: the starting pose has the strings 20 steps away.
    assert!(one("SELECT count(*) FROM partials WHERE amplitude > 0").await > 0);

    let states = one("SELECT count(*) FROM machine_state").await;
    let linked = one(
        "SELECT count(*) FROM machine_state m JOIN controls c USING (controls_id) \
         WHERE c.host = m.host",
    )
    .await;
    assert!(states > 0, "{out}");
    assert!(linked > 0, "no machine_state row linked to controls: {out}");
    // A linked snapshot's frame is within the configured link_max_age (2 s).
    let far = one(
        "SELECT count(*) FROM machine_state m JOIN controls c USING (controls_id) \
         WHERE abs(extract(epoch FROM m.recorded_at - c.recorded_at)) > 2",
    )
    .await;
    assert_eq!(far, 0);

    // What a new user does next: a report of what the demo recorded.
    let (since, until): (DateTime<Utc>, DateTime<Utc>) = {
        let r = client
            .query_one(
                "SELECT min(recorded_at), max(recorded_at) FROM controls",
                &[],
            )
            .await
            .expect("span");
        (r.get(0), r.get(1))
    };
    let out = dir.path().join("report.html");
    let summary = stringdriverd::report::run(stringdriverd::report::ReportArgs {
        config: dir.path().join("stringdriver.toml"),
        host: None,
        since: since - chrono::Duration::seconds(1),
        until: until + chrono::Duration::seconds(1),
        out: out.clone(),
        database_url: Some(db.url()),
    })
    .await
    .expect("report");
    assert_eq!(summary.host, "stringdriver-demo");
    assert_eq!(summary.machine_state_rows as i64, states);
    assert_eq!(summary.controls_rows as i64, controls);
    let html = std::fs::read_to_string(&out).expect("report");
    for c in 0..CHANNELS {
        for attr in [
            format!("data-chart=\"positions\" data-string=\"{c}\""),
            format!("data-chart=\"voice_count\" data-channel=\"{c}\""),
            format!("data-chart=\"amp_sum\" data-channel=\"{c}\""),
        ] {
            assert_eq!(html.matches(&attr).count(), 1, "{attr}");
        }
    }
}

#[tokio::test]
async fn frames_offered_while_the_database_is_away_are_dropped_and_counted() {
    let target: tokio_postgres::Config = "postgres://postgres@127.0.0.1:1/nothing"
        .parse()
        .expect("url");
    let shutdown = CancellationToken::new();
    let (db, task) = audmon_db::spawn(target.into(), "h".to_string(), shutdown.clone());
    let frame = vec![vec![(110.0f32, 1.0f32); 12]; 6];
    for _ in 0..5 {
        db.offer(chrono::Utc::now(), &frame);
    }
    let status = db
        .wait_for(Duration::from_secs(20), |s| s.dropped >= 5)
        .await
        .unwrap_or_else(|| panic!("frames not counted as dropped: {:?}", db.status()));
    assert_eq!(status.written, 0);
    assert!(!status.connected);
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("127.0.0.1:1")),
        "{status:?}"
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("writer stops")
        .expect("no panic");
}
