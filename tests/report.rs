//! `stringdriverd report` on generated recordings (tests/common/recordings.rs):
//! the numbers in the page's JSON block against the rows inserted and an
//! independent computation of the gaps, one chart per string and channel,
//! every operation in the timeline, and the page rendered by a real
//! headless Chromium with the network blocked (issue 14 item 2).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{DateTime, Duration, Utc};
use common::recordings::{self, Recording};
use serde_json::Value;
use stringdriverd::report::{self, ReportArgs, ReportError};

/// The JSON block of a report page.
fn data_block(html: &str) -> Value {
    let open = "<script type=\"application/json\" id=\"report-data\">";
    let start = html.find(open).expect("the page has its JSON block") + open.len();
    let len = html[start..].find("</script>").expect("the block ends");
    serde_json::from_str(&html[start..start + len]).expect("the block is JSON")
}

fn args(
    config: &Path,
    host: &str,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    out: &Path,
) -> ReportArgs {
    ReportArgs {
        config: config.to_path_buf(),
        host: Some(host.to_string()),
        since,
        until,
        out: out.to_path_buf(),
        database_url: None,
    }
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("not an RFC 3339 time: {v}"))
}

/// Spans of at least `min` between consecutive times of `rows`, the
/// window's ends counting as rows: the gaps, computed here in Rust.
fn expected_gaps(
    mut rows: Vec<DateTime<Utc>>,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    min: Duration,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    rows.retain(|t| *t >= since && *t < until);
    rows.push(since);
    rows.push(until);
    rows.sort();
    rows.windows(2)
        .filter(|w| w[1] - w[0] >= min)
        .map(|w| (w[0], w[1]))
        .collect()
}

fn listed_gaps(v: &Value) -> Vec<(DateTime<Utc>, DateTime<Utc>, String)> {
    v["listed"]
        .as_array()
        .expect("listed gaps")
        .iter()
        .map(|g| {
            (
                time(&g["from"]),
                time(&g["to"]),
                g["kind"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

async fn times(client: &tokio_postgres::Client, table: &str, host: &str) -> Vec<DateTime<Utc>> {
    client
        .query(
            &format!("SELECT recorded_at FROM {table} WHERE host = $1"),
            &[&host],
        )
        .await
        .expect("times")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// `target/report/NAME`, the directory CI keeps as an artefact.
fn artefact(name: &str) -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("report");
    std::fs::create_dir_all(&target).expect("target/report");
    target.join(name)
}

/// Opens `page` in headless Chromium (every host name unresolvable, the
/// browser's own background services off), saves a 1400×2000 screenshot at
/// `png` and the network log at `net`.
async fn chromium(page: &Path, png: &Path, net: &Path) -> std::process::Output {
    let mut cmd = Command::new("/usr/bin/chromium");
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--no-first-run",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--window-size=1400,2000",
    ])
    .arg(format!("--log-net-log={}", net.display()))
    .arg(format!("--screenshot={}", png.display()))
    .arg(format!("file://{}", page.display()));
    tokio::task::spawn_blocking(move || {
        cmd.output()
            .expect("chromium runs (scripts/ensure-test-tools.sh installs it)")
    })
    .await
    .expect("join")
}

/// The http(s) URLs in a Chromium network log, but for the browser's own
/// services (clock, updates, accounts), which it asks whatever the page.
fn page_requests(net: &Path) -> Vec<String> {
    let log = std::fs::read_to_string(net).expect("network log written");
    let mut urls: Vec<String> = log
        .split("\"url\":\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        .filter(|u| {
            let host = u.split('/').nth(2).unwrap_or("");
            !["google.com", "googleapis.com", "gvt1.com"]
                .iter()
                .any(|own| host == *own || host.ends_with(&format!(".{own}")))
        })
        .map(str::to_string)
        .collect();
    urls.sort();
    urls.dedup();
    urls
}

#[tokio::test]
async fn the_network_check_sees_a_page_that_fetches_something() {
    // The control of the offline check above: the same browser run on a
    // page with one remote image must log its request.
    let dir = tempfile::tempdir().expect("tempdir");
    let page = dir.path().join("remote.html");
    std::fs::write(
        &page,
        "<!DOCTYPE html><html><body><img src=\"https://example.com/x.png\"></body></html>",
    )
    .expect("page");
    let net = dir.path().join("net.json");
    let run = chromium(&page, &dir.path().join("remote.png"), &net).await;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        page_requests(&net),
        vec!["https://example.com/x.png".to_string()]
    );
}

/// Width and height of a PNG, from its IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(
        bytes.len() > 24 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG"
    );
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

#[tokio::test]
async fn report_counts_every_row_operation_and_gap_of_the_host_and_renders_offline_in_chromium() {
    // One snapshot linked every 10 s, so that the 5 s without timer
    // snapshots is a real gap in machine_state (audmon kept logging).
    let mut rec = Recording::small("host-a", 400, 1);
    rec.link_every = 40;
    let other = Recording::small("host-b", 120, 2);
    let (db, client, inserted) = recordings::database_with(&[rec.clone(), other]).await;
    let done = &inserted[0];
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::demo_config(dir.path(), &db.url());
    let since = rec.start - Duration::seconds(10);
    let until = rec.end() + Duration::seconds(10);
    let out = artefact("report.html");

    let summary = report::run(args(&config, &rec.host, since, until, &out))
        .await
        .expect("report");
    assert_eq!(summary.machine_state_rows, done.states);
    let html = std::fs::read_to_string(&out).expect("report written");
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    let v = data_block(&html);

    assert_eq!(v["host"], "host-a");
    assert_eq!(v["nothing_recorded"], false);
    assert_eq!(v["counts"]["machine_state"], done.states);
    assert_eq!(v["counts"]["linked_to_controls"], done.linked_states);
    assert_eq!(v["counts"]["controls"], done.frames);
    assert_eq!(v["counts"]["operations"], done.operations);
    assert_eq!(v["roles_from"], "stepper_roles");

    // One positions chart per string, voice_count and amp_sum per channel, X.
    let charts = v["charts"].as_array().expect("charts");
    for c in 0..rec.channels {
        for (kind, key) in [
            ("positions", "string"),
            ("voice_count", "channel"),
            ("amp_sum", "channel"),
        ] {
            let want = serde_json::json!({"chart": kind, key: c});
            assert_eq!(
                charts.iter().filter(|x| **x == want).count(),
                1,
                "{want} in {charts:?}"
            );
            let attr = format!("data-chart=\"{kind}\" data-{key}=\"{c}\"");
            assert_eq!(html.matches(&attr).count(), 1, "{attr}");
        }
    }
    assert_eq!(charts.len(), 1 + 3 * rec.channels, "{charts:?}");
    assert_eq!(html.matches("data-chart=\"x\"").count(), 1);

    // Every operation in the timeline, once, with its message on hover.
    let ids: Vec<&str> = v["operations"]["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(ids.len() as u64, done.operations);
    for id in &ids {
        assert_eq!(
            html.matches(&format!("data-operation-id=\"{id}\"")).count(),
            1,
            "{id}"
        );
    }
    assert_eq!(
        html.matches("<g class=\"op\"").count() as u64,
        done.operations
    );
    assert!(html.contains("retry threshold reached on string 1</title>"));
    let by: u64 = v["operations"]["by_type_status"]
        .as_array()
        .expect("by type")
        .iter()
        .map(|x| x["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(by, done.operations);
    let ops = recordings::operations(&rec);
    let count = |t: &str, s: &str| ops.iter().filter(|o| o.0 == t && o.3 == s).count() as u64;
    for x in v["operations"]["by_type_status"]
        .as_array()
        .expect("by type")
    {
        let (t, s) = (
            x["type"].as_str().unwrap_or(""),
            x["status"].as_str().unwrap_or(""),
        );
        assert_eq!(x["count"].as_u64(), Some(count(t, s)), "{x}");
    }

    // The gaps, as computed here from the rows.
    assert_eq!(v["gap_threshold_seconds"], 3.0);
    assert_eq!(v["gaps"]["machine_state"]["threshold_seconds"], 3.0);
    assert_eq!(v["gaps"]["controls"]["threshold_seconds"], 3.0);
    let min = Duration::seconds(3);
    let want = expected_gaps(
        times(&client, "machine_state", &rec.host).await,
        since,
        until,
        min,
    );
    let got = listed_gaps(&v["gaps"]["machine_state"]);
    assert_eq!(v["gaps"]["machine_state"]["total"], want.len());
    assert_eq!(got.iter().map(|g| (g.0, g.1)).collect::<Vec<_>>(), want);
    assert_eq!(got.len(), 3, "start, the timer pause, end: {got:?}");
    assert_eq!(got[0].2, "nothing_recorded");
    assert_eq!(got[1].2, "daemon_not_capturing");
    // The 5 s without timer snapshots from a quarter of the frames' span.
    let pause = rec.start + Duration::seconds(rec.frames as i64 / 4 / 4);
    assert!(
        got[1].0 < pause && got[1].1 > pause + Duration::seconds(4),
        "{got:?}"
    );
    // The window ended a month before "now": nothing can still be in a spool.
    assert!(got.iter().all(|g| g.2 != "unshipped"), "{got:?}");
    let want = expected_gaps(
        times(&client, "controls", &rec.host).await,
        since,
        until,
        min,
    );
    let got = listed_gaps(&v["gaps"]["controls"]);
    assert_eq!(got.iter().map(|g| (g.0, g.1)).collect::<Vec<_>>(), want);
    assert_eq!(got.len(), 3, "start, the audio pause, end: {got:?}");
    assert_eq!(got[1].2, "audmon_not_logging");

    // Nothing to fetch: the only URL is the SVG namespace.
    let mut rest = html.as_str();
    while let Some(i) = rest.find("http") {
        let tail = &rest[i..];
        assert!(
            tail.starts_with("http://www.w3.org/2000/svg\""),
            "a URL in the page: {}",
            &tail[..tail.len().min(80)]
        );
        rest = &rest[i + 4..];
    }

    // A real browser, with every host name unresolvable: the page must
    // render all the same, and its network log must show no request.
    let png = artefact("report.png");
    let _ = std::fs::remove_file(&png);
    let net = dir.path().join("net.json");
    let run = chromium(&out, &png, &net).await;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(page_requests(&net), Vec::<String>::new());
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert_eq!(png_size(&bytes), (1400, 2000));
    // A blank page compresses to a few kB; charts and tables do not.
    assert!(
        bytes.len() > 40_000,
        "screenshot only {} bytes",
        bytes.len()
    );
}

#[tokio::test]
async fn an_empty_window_writes_a_valid_report_that_says_nothing_was_recorded() {
    let rec = Recording::small("host-a", 40, 3);
    let (db, _client, _) = recordings::database_with(std::slice::from_ref(&rec)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::demo_config(dir.path(), &db.url());
    let out = dir.path().join("empty.html");
    let since = rec.start - Duration::days(30);
    let summary = report::run(args(
        &config,
        "host-a",
        since,
        since + Duration::hours(1),
        &out,
    ))
    .await
    .expect("report");
    assert_eq!(summary.machine_state_rows, 0);
    assert!(
        summary.render().contains("nothing was recorded"),
        "{}",
        summary.render()
    );
    let html = std::fs::read_to_string(&out).expect("written");
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    assert!(html.contains("id=\"nothing-recorded\""));
    let v = data_block(&html);
    assert_eq!(v["nothing_recorded"], true);
    assert_eq!(v["counts"]["machine_state"], 0);
    assert_eq!(v["counts"]["controls"], 0);
    assert_eq!(v["counts"]["operations"], 0);
    assert_eq!(v["charts"].as_array().map(Vec::len), Some(0));
    // The whole window is one gap with nothing in it.
    let gaps = listed_gaps(&v["gaps"]["machine_state"]);
    assert_eq!(gaps.len(), 1);
    assert_eq!((gaps[0].0, gaps[0].1), (since, since + Duration::hours(1)));

    // Another host of the same database is not this one's.
    let out2 = dir.path().join("other.html");
    let s = report::run(args(&config, "nobody", rec.start, rec.end(), &out2))
        .await
        .expect("report");
    assert_eq!(
        (s.machine_state_rows, s.controls_rows, s.operations),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn bad_arguments_are_refused_naming_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Nothing here is reached: every check comes before connecting.
    let config = common::demo_config(dir.path(), "postgres://postgres@127.0.0.1:1/nothing");
    let out = dir.path().join("r.html");
    let t = DateTime::parse_from_rfc3339("2026-11-01T12:00:00Z")
        .expect("time")
        .with_timezone(&Utc);

    let e = report::run(args(&config, "h", t, t, &out))
        .await
        .expect_err("empty window");
    assert!(matches!(e, ReportError::Window { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("--until") && text.contains("2026-11-01T12:00:00.000Z"),
        "{text}"
    );

    let e = report::run(args(&config, " ", t, t + Duration::hours(1), &out))
        .await
        .expect_err("empty host");
    assert!(e.to_string().contains("--host"), "{e}");

    let nowhere = dir.path().join("no/such/dir/r.html");
    let e = report::run(args(&config, "h", t, t + Duration::hours(1), &nowhere))
        .await
        .expect_err("no directory");
    assert!(e.to_string().contains("no/such/dir"), "{e}");

    let mut a = args(&config, "h", t, t + Duration::hours(1), &out);
    a.database_url = Some("postgres://u:hunter2@127.0.0.1/x".into());
    let e = report::run(a).await.expect_err("password in the URL");
    let text = e.to_string();
    assert!(
        text.contains("--database-url") && text.contains("password") && !text.contains("hunter2"),
        "{text}"
    );

    let e = report::run(args(
        &dir.path().join("missing.toml"),
        "h",
        t,
        t + Duration::hours(1),
        &out,
    ))
    .await
    .expect_err("no config");
    assert!(e.to_string().contains("missing.toml"), "{e}");

    let e = report::run(args(&config, "h", t, t + Duration::hours(1), &out))
        .await
        .expect_err("no server");
    assert!(matches!(e, ReportError::Connect(_)), "{e:?}");
    assert!(!out.exists());
}

#[tokio::test]
async fn audio_frames_sparser_than_the_gap_threshold_are_not_a_gap_each() {
    // One audmon frame every 4 s (longer than the configured 3 s), one
    // pause of a minute: only the pause (and the window's ends) are gaps.
    let mut rec = Recording::small("sparse", 60, 5);
    rec.fps = 0.25;
    rec.frame_gaps = vec![(30, Duration::seconds(60))];
    rec.sweeps = 0;
    let (db, _client, _) = recordings::database_with(std::slice::from_ref(&rec)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::demo_config(dir.path(), &db.url());
    let out = dir.path().join("sparse.html");
    let since = rec.start - Duration::seconds(60);
    let until = rec.end() + Duration::seconds(60);
    report::run(args(&config, "sparse", since, until, &out))
        .await
        .expect("report");
    let v = data_block(&std::fs::read_to_string(&out).expect("written"));
    let controls = &v["gaps"]["controls"];
    assert_eq!(controls["threshold_seconds"], 12.0, "{controls}");
    let got = listed_gaps(controls);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0].0, since);
    assert_eq!(got[1].1, rec.frame_time(30));
    assert_eq!(got[2].1, until);
}

#[tokio::test]
async fn report_subcommand_writes_the_page_and_refuses_a_reversed_window() {
    let rec = Recording::small("host-c", 80, 9);
    let (db, _client, inserted) = recordings::database_with(std::slice::from_ref(&rec)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The file's database is nowhere: --database-url must win.
    let config = common::demo_config(dir.path(), "postgres://postgres@127.0.0.1:1/nothing");
    let out = dir.path().join("cli.html");
    let run = |since: DateTime<Utc>, until: DateTime<Utc>| {
        Command::new(env!("CARGO_BIN_EXE_stringdriverd"))
            .arg("report")
            .arg("--config")
            .arg(&config)
            .args(["--host", "host-c", "--database-url", &db.url()])
            .args([
                "--since",
                &report::rfc3339(since),
                "--until",
                &report::rfc3339(until),
            ])
            .arg("--out")
            .arg(&out)
            .output()
            .expect("stringdriverd runs")
    };
    let o = run(rec.start, rec.end() + Duration::seconds(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let v = data_block(&std::fs::read_to_string(&out).expect("written"));
    assert_eq!(v["counts"]["machine_state"], inserted[0].states);
    assert_eq!(v["counts"]["controls"], inserted[0].frames);

    std::fs::remove_file(&out).expect("rm");
    let o = run(rec.end(), rec.start);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("--until") && stderr.contains("--since"),
        "{stderr}"
    );
    assert!(!out.exists());
}

#[tokio::test]
async fn a_schema_behind_this_build_is_read_down_to_v2_and_refused_below() {
    let rec = Recording::small("host-d", 40, 11);
    let (db, client, inserted) = recordings::database_with(std::slice::from_ref(&rec)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::demo_config(dir.path(), &db.url());
    let out = dir.path().join("old.html");
    let window = (rec.start, rec.end() + Duration::seconds(1));
    // As a database migrated by an older stringdriverd looks: V3 (indexes
    // only) not applied. The report only reads, so it reads it.
    client
        .batch_execute("DELETE FROM refinery_schema_history WHERE version > 2")
        .await
        .expect("forget V3");
    let s = report::run(args(&config, "host-d", window.0, window.1, &out))
        .await
        .expect("a V2 schema is read");
    assert_eq!(s.machine_state_rows, inserted[0].states);
    // Before V2 there is no stepper_roles nor completed_at: refused, naming the fix.
    client
        .batch_execute("DELETE FROM refinery_schema_history WHERE version > 1")
        .await
        .expect("forget V2");
    let e = report::run(args(&config, "host-d", window.0, window.1, &out))
        .await
        .expect_err("a V1 schema is refused");
    assert!(matches!(e, ReportError::Schema(_)), "{e:?}");
    assert!(e.to_string().contains("stringdriverd migrate"), "{e}");
}
