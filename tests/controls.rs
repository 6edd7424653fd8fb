//! controls_id linking against a real PostgreSQL: the snapshot-time cache
//! (host filter, age limit, refresh, outage, never blocking) and the
//! batch backfill by nearest timestamp, with audmon's controls_id as UUID
//! and as TEXT.

mod common;

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use common::pg::TestDb;
use common::records::t0;
use stringdriverd::store::controls::{
    backfill, render_linked, spawn_controls_cache, ControlsCache, Linked,
};
use stringdriverd::store::migrate::migrate;
use tokio::sync::watch;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(10);
const REFRESH: Duration = Duration::from_millis(20);

fn at(ms: i64) -> DateTime<Utc> {
    t0() + TimeDelta::milliseconds(ms)
}

fn secs(s: i64) -> DateTime<Utc> {
    at(s * 1000)
}

async fn migrated(db: &TestDb) -> Client {
    let mut c = db.client().await;
    migrate(&mut c).await.expect("migrate");
    c
}

/// A bare `controls` table as some audmon installs have it, created before
/// migrating so that machine_state.controls_id follows it.
async fn migrated_with_text_controls(db: &TestDb) -> Client {
    let mut c = db.client().await;
    c.batch_execute(
        "CREATE TABLE controls (controls_id TEXT PRIMARY KEY, host VARCHAR(255) NOT NULL, \
         recorded_at TIMESTAMPTZ NOT NULL)",
    )
    .await
    .expect("create audmon's controls");
    migrate(&mut c).await.expect("migrate");
    c
}

/// The SQL type of `controls.controls_id`, to insert ids given as text.
async fn controls_id_type(c: &Client) -> String {
    c.query_one(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
         WHERE attrelid = 'controls'::regclass AND attname = 'controls_id'",
        &[],
    )
    .await
    .expect("controls_id type")
    .get(0)
}

async fn insert_controls(c: &Client, id: &str, host: &str, recorded_at: DateTime<Utc>) {
    let ty = controls_id_type(c).await;
    c.execute(
        &format!(
            "INSERT INTO controls (controls_id, host, recorded_at) \
             VALUES (CAST($1::text AS {ty}), $2, $3)"
        ),
        &[&id, &host, &recorded_at],
    )
    .await
    .expect("insert controls");
}

/// A machine_state row with every NOT NULL column filled in; `controls`
/// (an existing controls_id, as text) links it from the start.
async fn insert_state(
    c: &Client,
    state_id: Uuid,
    host: &str,
    recorded_at: DateTime<Utc>,
    controls: Option<&str>,
) {
    c.execute(
        "INSERT INTO machine_state (state_id, controls_id, host, recorded_at, \
             stepper_positions, stepper_enabled, bump_check_enable, z_up_step, z_down_step, \
             tune_rest, x_rest, z_rest, lap_rest, adjustment_level, retry_threshold, \
             delta_threshold, z_variance_threshold, voice_count, amp_sum, voice_count_min, \
             voice_count_max, amp_sum_min, amp_sum_max) \
         SELECT $1, (SELECT controls_id FROM controls WHERE controls_id::text = $4), $2, $3, \
             '{1,2,3}', '{t,t,f}', true, 2, -2, 5, 5, 1, 4, 4, 50, 50, 50, \
             '{3}', '{20.5}', '{0}', '{12}', '{20}', '{100}'",
        &[&state_id, &host, &recorded_at, &controls],
    )
    .await
    .expect("insert machine_state");
}

/// Every machine_state row as (state_id, controls_id as text).
async fn links(c: &Client) -> Vec<(Uuid, Option<String>)> {
    c.query(
        "SELECT state_id, controls_id::text FROM machine_state ORDER BY recorded_at, state_id",
        &[],
    )
    .await
    .expect("read machine_state")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn uid(i: u128) -> Uuid {
    Uuid::from_u128(0xc0c0_0000_0000_4000_8000_0000_0000_0000 | i)
}

async fn stop(shutdown: CancellationToken, task: tokio::task::JoinHandle<()>) {
    shutdown.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the cache task stops on shutdown")
        .expect("the cache task does not panic");
}

async fn newest_is(cache: &ControlsCache, id: Uuid, recorded_at: DateTime<Utc>) {
    cache
        .wait_for(WAIT, |s| s.newest == Some((id, recorded_at)))
        .await
        .unwrap_or_else(|| panic!("the cache never showed {id}: {:?}", cache.status()));
}

#[tokio::test]
async fn cache_follows_the_newest_row_of_its_host_and_empties_when_the_database_goes() {
    let db = TestDb::create().await;
    let c = migrated(&db).await;
    let (old, a, other) = (uid(1), uid(2), uid(3));
    insert_controls(&c, &old.to_string(), "h1", secs(-10)).await;
    insert_controls(&c, &a.to_string(), "h1", secs(0)).await;
    // Newer, but another host's.
    insert_controls(&c, &other.to_string(), "h2", secs(5)).await;

    let shutdown = CancellationToken::new();
    let (cache, task) =
        spawn_controls_cache(db.config.clone(), "h1".into(), REFRESH, shutdown.clone());
    newest_is(&cache, a, secs(0)).await;
    let status = cache.status();
    assert!(status.connected, "{status:?}");
    assert_eq!(status.last_error, None);

    let max_age = Duration::from_secs(2);
    assert_eq!(cache.lookup(at(1500), max_age), Some(a));
    assert_eq!(
        cache.lookup(secs(2), max_age),
        Some(a),
        "max_age is inclusive"
    );
    assert_eq!(cache.lookup(at(2001), max_age), None, "older than max_age");
    assert_eq!(cache.lookup(secs(-1), max_age), Some(a));
    assert_eq!(
        cache.lookup(secs(-3), max_age),
        None,
        "too far in the future"
    );
    assert_eq!(
        cache.clone().lookup(at(100), max_age),
        Some(a),
        "clones share it"
    );

    let b = uid(4);
    insert_controls(&c, &b.to_string(), "h1", secs(20)).await;
    newest_is(&cache, b, secs(20)).await;
    assert_eq!(cache.lookup(secs(21), max_age), Some(b));
    assert_eq!(
        cache.lookup(secs(1), max_age),
        None,
        "only the newest row is used"
    );

    // The database goes away under the open session.
    let mut admin_cfg = db.config.clone();
    admin_cfg.dbname("postgres");
    let (admin, conn) = admin_cfg
        .connect(tokio_postgres::NoTls)
        .await
        .expect("admin connection");
    tokio::spawn(conn);
    drop(c);
    admin
        .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", db.name))
        .await
        .expect("drop the database");
    let gone = cache
        .wait_for(WAIT, |s| !s.connected && s.newest.is_none())
        .await
        .unwrap_or_else(|| panic!("the cache kept its row: {:?}", cache.status()));
    assert!(gone.last_error.is_some(), "{gone:?}");
    assert_eq!(cache.lookup(secs(20), max_age), None);

    stop(shutdown, task).await;
}

#[tokio::test]
async fn cache_skips_text_ids_that_are_not_canonical_uuids() {
    let db = TestDb::create().await;
    let c = migrated_with_text_controls(&db).await;
    let a = uid(10);
    insert_controls(&c, &a.to_string(), "h1", secs(0)).await;

    let shutdown = CancellationToken::new();
    let (cache, task) =
        spawn_controls_cache(db.config.clone(), "h1".into(), REFRESH, shutdown.clone());
    newest_is(&cache, a, secs(0)).await;
    assert_eq!(cache.lookup(secs(1), Duration::from_secs(2)), Some(a));

    // Not a UUID at all, then a UUID the shipper would spell differently.
    insert_controls(&c, "frame-0042", "h1", secs(1)).await;
    let s = cache
        .wait_for(WAIT, |s| s.newest.is_none())
        .await
        .unwrap_or_else(|| panic!("a non-UUID id was cached: {:?}", cache.status()));
    assert!(s.connected, "not an outage: {s:?}");
    assert!(
        s.last_error.as_deref().unwrap_or("").contains("frame-0042"),
        "{s:?}"
    );
    assert_eq!(cache.lookup(secs(1), Duration::from_secs(2)), None);
    let upper = uid(11);
    insert_controls(&c, &upper.to_string().to_uppercase(), "h1", secs(2)).await;
    cache
        .wait_for(WAIT, |s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains(&upper.to_string().to_uppercase()))
        })
        .await
        .unwrap_or_else(|| panic!("the upper-case id was not refused: {:?}", cache.status()));
    assert_eq!(cache.status().newest, None);

    let b = uid(12);
    insert_controls(&c, &b.to_string(), "h1", secs(3)).await;
    newest_is(&cache, b, secs(3)).await;
    assert_eq!(cache.lookup(secs(3), Duration::from_secs(2)), Some(b));

    stop(shutdown, task).await;
}

/// A server that accepts connections and never says a word, so that the
/// cache's task sits in the start-up exchange until its connect timeout,
/// then reconnects. Publishes the number of connections accepted.
async fn black_hole() -> (std::net::SocketAddr, watch::Receiver<usize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (count, accepted) = watch::channel(0);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
            count.send_replace(held.len());
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_never_blocks_while_the_task_reconnects() {
    let (addr, mut accepted) = black_hole().await;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(addr.ip().to_string())
        .port(addr.port())
        .user("postgres")
        .dbname("nowhere")
        .connect_timeout(Duration::from_millis(100));
    let shutdown = CancellationToken::new();
    let (cache, task) = spawn_controls_cache(cfg, "h1".into(), REFRESH, shutdown.clone());

    // A second connection: the task has failed once and is trying again,
    // and is now waiting on a server that does not answer.
    tokio::time::timeout(WAIT, accepted.wait_for(|n| *n >= 2))
        .await
        .expect("the cache task reconnects")
        .expect("the listener runs");
    let mut found = 0;
    for i in 0..10_000 {
        if cache
            .lookup(secs(i % 7), Duration::from_secs(3600))
            .is_some()
        {
            found += 1;
        }
    }
    assert_eq!(found, 0, "nothing to link without a database");
    let s = cache.status();
    assert!(!s.connected, "{s:?}");
    assert!(
        cache
            .wait_for(WAIT, |s| s.last_error.is_some())
            .await
            .is_some(),
        "the failed connects are reported: {:?}",
        cache.status()
    );

    stop(shutdown, task).await;
}

/// What [`scenario`] inserted: controls rows of h1 at 0, 10, 20 and 30 s,
/// controls rows of h2 at the exact times of h2's snapshots (and of two of
/// h1's), and the snapshots below.
struct Scenario {
    /// h1's snapshots at 1, 9.5, 15, 29, 45 and -100 s; the one at 29 s is
    /// linked to `controls[0]` from the start.
    s: [Uuid; 6],
    /// h2's snapshots, at 1 and 15 s.
    other: [Uuid; 2],
    /// h1's controls ids, at 0, 10, 20 and 30 s.
    controls: [String; 4],
}

async fn scenario(c: &Client, ids: [String; 4], other_ids: [String; 2]) -> Scenario {
    for (i, id) in ids.iter().enumerate() {
        insert_controls(c, id, "h1", secs(10 * i as i64)).await;
    }
    insert_controls(c, &other_ids[0], "h2", secs(1)).await;
    insert_controls(c, &other_ids[1], "h2", secs(15)).await;
    let s = [uid(101), uid(102), uid(103), uid(104), uid(105), uid(106)];
    insert_state(c, s[0], "h1", secs(1), None).await;
    insert_state(c, s[1], "h1", at(9_500), None).await;
    insert_state(c, s[2], "h1", secs(15), None).await;
    insert_state(c, s[3], "h1", secs(29), Some(&ids[0])).await;
    insert_state(c, s[4], "h1", secs(45), None).await;
    insert_state(c, s[5], "h1", secs(-100), None).await;
    let other = [uid(201), uid(202)];
    insert_state(c, other[0], "h2", secs(1), None).await;
    insert_state(c, other[1], "h2", secs(15), None).await;
    Scenario {
        s,
        other,
        controls: ids,
    }
}

async fn backfill_links_nearest_within_tolerance(c: &Client, sc: &Scenario) {
    let tolerance = Duration::from_secs(5);
    let ctl = &sc.controls;

    // Since 5 s: the snapshots at 9.5 s (nearest: 10 s, after) and at 15 s
    // (10 s and 20 s tie at 5 s, exactly the tolerance: the earlier wins).
    let first = backfill(c, "h1", Some(secs(5)), tolerance)
        .await
        .expect("backfill since");
    assert_eq!(
        first,
        vec![
            Linked {
                state_id: sc.s[1],
                controls_id: ctl[1].clone(),
                recorded_at: at(9_500),
                offset_ms: 500,
            },
            Linked {
                state_id: sc.s[2],
                controls_id: ctl[1].clone(),
                recorded_at: secs(15),
                offset_ms: -5_000,
            },
        ]
    );

    let second = backfill(c, "h1", None, tolerance)
        .await
        .expect("backfill all");
    assert_eq!(
        second,
        vec![Linked {
            state_id: sc.s[0],
            controls_id: ctl[0].clone(),
            recorded_at: secs(1),
            offset_ms: -1_000,
        }]
    );
    assert_eq!(
        render_linked(&second),
        format!(
            "state_id={} controls_id={} recorded_at=2026-11-01T12:00:01Z offset_ms=-1000\n\
             linked 1 machine_state rows\n",
            sc.s[0], ctl[0]
        )
    );

    let third = backfill(c, "h1", None, tolerance)
        .await
        .expect("backfill again");
    assert_eq!(third, Vec::new(), "a second run changes nothing");

    let expected: Vec<(Uuid, Option<String>)> = vec![
        (sc.s[5], None),                 // -100 s: nothing within 5 s
        (sc.s[0], Some(ctl[0].clone())), // 1 s
        (sc.other[0], None),             // h2: another host
        (sc.s[1], Some(ctl[1].clone())), // 9.5 s
        (sc.s[2], Some(ctl[1].clone())), // 15 s
        (sc.other[1], None),             // h2
        (sc.s[3], Some(ctl[0].clone())), // 29 s: was linked, untouched
        (sc.s[4], None),                 // 45 s: 15 s from the nearest
    ];
    assert_eq!(links(c).await, expected);
}

#[tokio::test]
async fn backfill_links_by_nearest_timestamp_with_uuid_controls() {
    let db = TestDb::create().await;
    let c = migrated(&db).await;
    let ids = [uid(1), uid(2), uid(3), uid(4)].map(|u| u.to_string());
    let sc = scenario(&c, ids, [uid(8).to_string(), uid(9).to_string()]).await;
    backfill_links_nearest_within_tolerance(&c, &sc).await;
}

#[tokio::test]
async fn backfill_links_by_nearest_timestamp_with_text_controls() {
    let db = TestDb::create().await;
    let c = migrated_with_text_controls(&db).await;
    // Any text joins: the backfill never parses or casts audmon's ids.
    let ids = ["frame-0", "frame-10", "frame-20", "frame-30"].map(String::from);
    let sc = scenario(&c, ids, ["other-1".into(), "other-15".into()]).await;
    backfill_links_nearest_within_tolerance(&c, &sc).await;
}

#[tokio::test]
async fn backfill_reports_the_sql_error_and_what_it_was_doing() {
    let db = TestDb::create().await;
    let c = db.client().await; // not migrated: no machine_state
    let e = backfill(&c, "h1", None, Duration::from_secs(1))
        .await
        .expect_err("no tables");
    let text = e.to_string();
    assert!(
        text.contains("linking machine_state rows of host h1"),
        "{text}"
    );
    assert!(text.contains("SQLSTATE 42P01"), "{text}");
}
