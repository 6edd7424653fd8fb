//! The PostgreSQL schema against a real server: the migrations produce the
//! tables of DATABASE_SCHEMA.md exactly, on a bare database and beside
//! audmon's tables; the document's queries run; the start-up check, the
//! stepper map and the connection settings behave.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use common::pg::TestDb;
use stringdriverd::config::{self, DatabaseConfig, DatabaseTarget};
use stringdriverd::store::migrate::{
    check_migrated, latest_version, migrate, ControlsIdType, MigrateError,
};
use stringdriverd::store::pg::{connect, describe, pg_config, StoreConnectError};
use stringdriverd::store::roles::sync_stepper_roles;
use tokio_postgres::Client;

/// (column, data_type, udt_name, is_nullable, character_maximum_length)
type Column = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Option<i32>,
);

const MACHINE_STATE: &[Column] = &[
    ("state_id", "uuid", "uuid", "NO", None),
    ("controls_id", "uuid", "uuid", "YES", None),
    ("host", "character varying", "varchar", "NO", Some(255)),
    (
        "recorded_at",
        "timestamp with time zone",
        "timestamptz",
        "NO",
        None,
    ),
    ("stepper_positions", "ARRAY", "_int4", "NO", None),
    ("stepper_enabled", "ARRAY", "_bool", "NO", None),
    ("bump_check_enable", "boolean", "bool", "NO", None),
    ("z_up_step", "integer", "int4", "NO", None),
    ("z_down_step", "integer", "int4", "NO", None),
    ("tune_rest", "real", "float4", "NO", None),
    ("x_rest", "real", "float4", "NO", None),
    ("z_rest", "real", "float4", "NO", None),
    ("lap_rest", "real", "float4", "NO", None),
    ("adjustment_level", "integer", "int4", "NO", None),
    ("retry_threshold", "integer", "int4", "NO", None),
    ("delta_threshold", "integer", "int4", "NO", None),
    ("z_variance_threshold", "integer", "int4", "NO", None),
    ("voice_count", "ARRAY", "_int4", "NO", None),
    ("amp_sum", "ARRAY", "_float4", "NO", None),
    ("voice_count_min", "ARRAY", "_int4", "NO", None),
    ("voice_count_max", "ARRAY", "_int4", "NO", None),
    ("amp_sum_min", "ARRAY", "_int4", "NO", None),
    ("amp_sum_max", "ARRAY", "_int4", "NO", None),
];

const OPERATIONS: &[Column] = &[
    ("operation_id", "uuid", "uuid", "NO", None),
    ("state_id", "uuid", "uuid", "YES", None),
    ("host", "character varying", "varchar", "NO", Some(255)),
    (
        "recorded_at",
        "timestamp with time zone",
        "timestamptz",
        "NO",
        None,
    ),
    (
        "operation_type",
        "character varying",
        "varchar",
        "NO",
        Some(50),
    ),
    (
        "operation_status",
        "character varying",
        "varchar",
        "NO",
        Some(50),
    ),
    ("message", "text", "text", "YES", None),
    ("stepper_indices", "ARRAY", "_int4", "NO", None),
    ("final_positions", "ARRAY", "_int4", "NO", None),
    // V2
    (
        "completed_at",
        "timestamp with time zone",
        "timestamptz",
        "YES",
        None,
    ),
];

const STEPPER_ROLES: &[Column] = &[
    ("host", "character varying", "varchar", "NO", Some(255)),
    ("stepper_index", "integer", "int4", "NO", None),
    ("board", "character varying", "varchar", "NO", Some(255)),
    ("local_index", "integer", "int4", "NO", None),
    ("role", "character varying", "varchar", "NO", Some(16)),
    ("string_index", "integer", "int4", "YES", None),
    (
        "updated_at",
        "timestamp with time zone",
        "timestamptz",
        "NO",
        None,
    ),
];

/// The schema document's three queries, verbatim.
const QUERY_DATASET: &str = "\
SELECT 
    c.controls_id,
    c.recorded_at,
    p.channel,
    p.frequency,
    p.amplitude,
    ms.stepper_positions,
    ms.z_up_step,
    ms.adjustment_level,
    -- ... other state fields
FROM controls c
JOIN partials p ON c.controls_id = p.controls_id
JOIN machine_state ms ON c.controls_id = ms.controls_id
WHERE c.host = 'stringdriver-3'
  AND c.recorded_at BETWEEN '2025-01-01' AND '2025-01-31'
ORDER BY c.recorded_at, p.channel, p.partial_index;";

const QUERY_HISTORY: &str = "\
SELECT 
    o.recorded_at,
    o.operation_type,
    o.operation_status,
    o.stepper_indices,
    o.final_positions,
    ms.stepper_positions AS initial_positions
FROM operations o
LEFT JOIN machine_state ms ON o.state_id = ms.state_id
WHERE o.host = 'stringdriver-3'
  AND o.recorded_at > NOW() - INTERVAL '7 days'
ORDER BY o.recorded_at DESC;";

const QUERY_CALIBRATIONS: &str = "\
SELECT 
    recorded_at,
    operation_type,
    message,
    stepper_indices
FROM operations
WHERE operation_type = 'z_calibrate'
  AND operation_status = 'completed'
ORDER BY recorded_at DESC
LIMIT 10;";

/// The document's first query leaves a comma before FROM once its comment
/// is stripped, which PostgreSQL rejects; this is it with only that comma
/// removed.
fn query_dataset_runnable() -> String {
    let fixed = QUERY_DATASET.replace(
        "ms.adjustment_level,\n    -- ... other state fields",
        "ms.adjustment_level\n    -- ... other state fields",
    );
    assert_ne!(fixed, QUERY_DATASET, "the edit must apply");
    fixed
}

async fn migrated() -> (TestDb, Client) {
    let db = TestDb::create().await;
    let mut c = db.client().await;
    let report = migrate(&mut c).await.expect("migrate");
    assert_eq!(report.current, latest_version());
    (db, c)
}

async fn columns(c: &Client, table: &str) -> Vec<(String, String, String, String, Option<i32>)> {
    c.query(
        "SELECT column_name::text, data_type::text, udt_name::text, is_nullable::text, \
                character_maximum_length::int4 \
         FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 \
         ORDER BY ordinal_position",
        &[&table],
    )
    .await
    .expect("columns")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

fn owned(expected: &[Column]) -> Vec<(String, String, String, String, Option<i32>)> {
    expected
        .iter()
        .map(|(n, d, u, null, len)| {
            (
                n.to_string(),
                d.to_string(),
                u.to_string(),
                null.to_string(),
                *len,
            )
        })
        .collect()
}

async fn primary_key(c: &Client, table: &str) -> Vec<String> {
    c.query(
        "SELECT a.attname::text FROM pg_constraint k \
         JOIN LATERAL unnest(k.conkey) WITH ORDINALITY AS u(attnum, n) ON true \
         JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.attnum \
         WHERE k.conrelid = to_regclass($1) AND k.contype = 'p' ORDER BY u.n",
        &[&table],
    )
    .await
    .expect("primary key")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Foreign keys of `table`: (column, referenced table, referenced column, on-delete action).
async fn foreign_keys(c: &Client, table: &str) -> Vec<(String, String, String, String)> {
    c.query(
        "SELECT a.attname::text, k.confrelid::regclass::text, fa.attname::text, \
                k.confdeltype::text \
         FROM pg_constraint k \
         JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1] \
         JOIN pg_attribute fa ON fa.attrelid = k.confrelid AND fa.attnum = k.confkey[1] \
         WHERE k.conrelid = to_regclass($1) AND k.contype = 'f' ORDER BY 1",
        &[&table],
    )
    .await
    .expect("foreign keys")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

async fn column_type(c: &Client, table: &str, column: &str) -> String {
    c.query_one(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
         WHERE attrelid = to_regclass($1) AND attname = $2",
        &[&table, &column],
    )
    .await
    .expect("column type")
    .get(0)
}

async fn count(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.expect(sql).get(0)
}

async fn table_exists(c: &Client, table: &str) -> bool {
    c.query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .expect("to_regclass")
        .get(0)
}

/// An INSERT of a machine_state row with every NOT NULL column filled.
fn machine_state_insert(state_id: &str, controls_id: &str, host: &str, at: &str) -> String {
    format!(
        "INSERT INTO machine_state VALUES ('{state_id}', {controls_id}, '{host}', '{at}', \
         '{{10,20,30}}', '{{t,t,f}}', true, 2, -2, 5, 5, 1, 4, 4, 50, 50, 50, \
         '{{3,4}}', '{{0.5,0.25}}', '{{1,1}}', '{{9,9}}', '{{0,0}}', '{{100,100}}')"
    )
}

// ------------------------------------------------------------------ schema

#[tokio::test]
async fn a_fresh_database_gets_the_documented_schema() {
    let db = TestDb::create().await;
    let mut c = db.client().await;
    let report = migrate(&mut c).await.expect("migrate");
    assert_eq!(
        report.applied,
        vec![
            (1, "machine_state_and_operations".to_string()),
            (2, "completed_at_and_stepper_roles".to_string()),
            (3, "host_time_indexes".to_string()),
        ]
    );
    assert_eq!(report.current, 3);
    assert_eq!(latest_version(), 3);

    assert_eq!(columns(&c, "machine_state").await, owned(MACHINE_STATE));
    assert_eq!(columns(&c, "operations").await, owned(OPERATIONS));
    assert_eq!(columns(&c, "stepper_roles").await, owned(STEPPER_ROLES));

    assert_eq!(primary_key(&c, "machine_state").await, ["state_id"]);
    assert_eq!(primary_key(&c, "operations").await, ["operation_id"]);
    assert_eq!(
        primary_key(&c, "stepper_roles").await,
        ["host", "stepper_index"]
    );
    assert_eq!(primary_key(&c, "controls").await, ["controls_id"]);
    assert_eq!(
        primary_key(&c, "partials").await,
        ["controls_id", "channel", "partial_index"]
    );

    let set_null = |col: &str, table: &str, fcol: &str| {
        (
            col.to_string(),
            table.to_string(),
            fcol.to_string(),
            "n".to_string(),
        )
    };
    assert_eq!(
        foreign_keys(&c, "machine_state").await,
        [set_null("controls_id", "controls", "controls_id")]
    );
    assert_eq!(
        foreign_keys(&c, "operations").await,
        [set_null("state_id", "machine_state", "state_id")]
    );
    // audmon's rows of one frame go with their controls row.
    assert_eq!(
        foreign_keys(&c, "partials").await,
        [(
            "controls_id".to_string(),
            "controls".to_string(),
            "controls_id".to_string(),
            "c".to_string()
        )]
    );

    let indexes: Vec<(String, String)> = c
        .query(
            "SELECT indexname::text, tablename::text FROM pg_indexes \
             WHERE schemaname = current_schema() AND indexname LIKE 'idx\\_%' ORDER BY 1",
            &[],
        )
        .await
        .expect("indexes")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: Vec<(String, String)> = [
        ("idx_controls_host_recorded_at", "controls"),
        ("idx_machine_state_controls_id", "machine_state"),
        ("idx_machine_state_host", "machine_state"),
        ("idx_machine_state_host_recorded_at", "machine_state"),
        ("idx_machine_state_recorded_at", "machine_state"),
        ("idx_operations_host", "operations"),
        ("idx_operations_host_recorded_at", "operations"),
        ("idx_operations_recorded_at", "operations"),
        ("idx_operations_state_id", "operations"),
        ("idx_operations_type", "operations"),
    ]
    .iter()
    .map(|(i, t)| (i.to_string(), t.to_string()))
    .collect();
    assert_eq!(indexes, expected);
    // Each index is on the column its name says.
    let defs: Vec<String> = c
        .query(
            "SELECT indexdef FROM pg_indexes WHERE indexname LIKE 'idx\\_%' ORDER BY indexname",
            &[],
        )
        .await
        .expect("index definitions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (def, col) in defs.iter().zip([
        "(host, recorded_at)",
        "(controls_id)",
        "(host)",
        "(host, recorded_at)",
        "(recorded_at)",
        "(host)",
        "(host, recorded_at)",
        "(recorded_at)",
        "(state_id)",
        "(operation_type)",
    ]) {
        assert!(def.ends_with(&format!("USING btree {col}")), "{def}");
    }

    // audmon-compatible tables, as audmon describes them.
    let controls: Vec<(String, String)> = columns(&c, "controls")
        .await
        .into_iter()
        .map(|(n, _, u, null, _)| (n, format!("{u} {null}")))
        .collect();
    assert_eq!(
        controls,
        [
            ("controls_id".to_string(), "uuid NO".to_string()),
            ("host".to_string(), "varchar NO".to_string()),
            ("recorded_at".to_string(), "timestamptz NO".to_string()),
        ]
    );
    let partials: Vec<(String, String)> = columns(&c, "partials")
        .await
        .into_iter()
        .map(|(n, _, u, null, _)| (n, format!("{u} {null}")))
        .collect();
    assert_eq!(
        partials,
        [
            ("controls_id".to_string(), "uuid NO".to_string()),
            ("channel".to_string(), "int4 NO".to_string()),
            ("partial_index".to_string(), "int4 NO".to_string()),
            ("frequency".to_string(), "float4 NO".to_string()),
            ("amplitude".to_string(), "float4 NO".to_string()),
        ]
    );

    // The role CHECK refuses a role the daemon does not write.
    let e = c
        .batch_execute(
            "INSERT INTO stepper_roles (host, stepper_index, board, local_index, role) \
             VALUES ('h', 0, 'b', 0, 'bogus')",
        )
        .await
        .expect_err("bad role refused");
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION)
    );
}

#[tokio::test]
async fn migrating_twice_applies_nothing_the_second_time() {
    let (_db, mut c) = migrated().await;
    let again = migrate(&mut c).await.expect("second migrate");
    assert!(again.applied.is_empty(), "{again:?}");
    assert_eq!(again.current, 3);
    assert_eq!(
        count(&c, "SELECT count(*) FROM refinery_schema_history").await,
        3
    );
}

#[tokio::test]
async fn concurrent_migrations_apply_each_version_once() {
    let db = TestDb::create().await;
    let mut a = db.client().await;
    let mut b = db.client().await;
    let (ra, rb) = tokio::join!(migrate(&mut a), migrate(&mut b));
    let (ra, rb) = (ra.expect("first"), rb.expect("second"));
    assert_eq!(ra.applied.len() + rb.applied.len(), 3, "{ra:?} {rb:?}");
    assert_eq!(ra.current, 3);
    assert_eq!(rb.current, 3);
}

// ------------------------------------------------------------------ audmon

#[tokio::test]
async fn an_audmon_uuid_controls_table_is_kept_with_its_data() {
    let db = TestDb::create().await;
    let mut c = db.client().await;
    c.batch_execute(
        "CREATE TABLE controls (
             controls_id UUID PRIMARY KEY,
             host VARCHAR(255) NOT NULL,
             recorded_at TIMESTAMPTZ NOT NULL,
             gain REAL,
             note TEXT
         );
         CREATE TABLE partials (
             controls_id UUID REFERENCES controls ON DELETE CASCADE,
             channel INTEGER NOT NULL,
             partial_index INTEGER NOT NULL,
             frequency REAL NOT NULL,
             amplitude REAL NOT NULL,
             bandwidth REAL,
             PRIMARY KEY (controls_id, channel, partial_index)
         );
         INSERT INTO controls VALUES
             ('11111111-1111-4111-8111-111111111111', 'stringdriver-3', now(), 0.5, 'audmon');
         INSERT INTO partials VALUES
             ('11111111-1111-4111-8111-111111111111', 0, 0, 110, 0.5, 2);",
    )
    .await
    .expect("audmon schema");

    migrate(&mut c).await.expect("migrate");

    // audmon's table is untouched: its extra columns and its rows remain.
    let names: Vec<String> = columns(&c, "controls")
        .await
        .into_iter()
        .map(|col| col.0)
        .collect();
    assert_eq!(
        names,
        ["controls_id", "host", "recorded_at", "gain", "note"]
    );
    assert_eq!(
        columns(&c, "partials").await.len(),
        6,
        "partials keeps bandwidth"
    );
    let note: String = c
        .query_one("SELECT note FROM controls", &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(note, "audmon");
    assert_eq!(count(&c, "SELECT count(*) FROM partials").await, 1);

    assert_eq!(
        column_type(&c, "machine_state", "controls_id").await,
        "uuid"
    );
    c.batch_execute(&machine_state_insert(
        "22222222-2222-4222-8222-222222222222",
        "'11111111-1111-4111-8111-111111111111'",
        "stringdriver-3",
        "2025-01-15T12:00:00Z",
    ))
    .await
    .expect("a machine_state row links to audmon's row");
    let info = check_migrated(&c).await.expect("check");
    assert_eq!(info.controls_id, ControlsIdType::Uuid);
}

#[tokio::test]
async fn an_audmon_text_controls_id_makes_machine_state_text() {
    let db = TestDb::create().await;
    let mut c = db.client().await;
    c.batch_execute(
        "CREATE TABLE controls (
             controls_id TEXT PRIMARY KEY,
             host VARCHAR(255) NOT NULL,
             recorded_at TIMESTAMPTZ NOT NULL
         );
         CREATE TABLE partials (
             controls_id TEXT REFERENCES controls ON DELETE CASCADE,
             channel INTEGER NOT NULL,
             partial_index INTEGER NOT NULL,
             frequency REAL NOT NULL,
             amplitude REAL NOT NULL,
             PRIMARY KEY (controls_id, channel, partial_index)
         );
         INSERT INTO controls VALUES ('frame-0001', 'stringdriver-3', now());",
    )
    .await
    .expect("audmon schema");

    migrate(&mut c).await.expect("migrate");

    assert_eq!(
        column_type(&c, "machine_state", "controls_id").await,
        "text"
    );
    assert_eq!(
        foreign_keys(&c, "machine_state").await,
        [(
            "controls_id".to_string(),
            "controls".to_string(),
            "controls_id".to_string(),
            "n".to_string()
        )]
    );
    c.batch_execute(&machine_state_insert(
        "22222222-2222-4222-8222-222222222222",
        "'frame-0001'",
        "stringdriver-3",
        "2025-01-15T12:00:00Z",
    ))
    .await
    .expect("a machine_state row links to audmon's text id");
    let e = c
        .batch_execute(&machine_state_insert(
            "33333333-3333-4333-8333-333333333333",
            "'no-such-frame'",
            "stringdriver-3",
            "2025-01-15T12:00:00Z",
        ))
        .await
        .expect_err("the foreign key holds");
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION)
    );
    let info = check_migrated(&c).await.expect("check");
    assert_eq!(info.controls_id, ControlsIdType::Text);
    assert_eq!(info.version, 3);
    // The rest of the documented schema is unchanged.
    let mut expected = owned(MACHINE_STATE);
    expected[1] = (
        "controls_id".into(),
        "text".into(),
        "text".into(),
        "YES".into(),
        None,
    );
    assert_eq!(columns(&c, "machine_state").await, expected);
}

#[tokio::test]
async fn a_broken_audmon_schema_fails_the_migration_clearly_and_changes_nothing() {
    for (setup, fragment) in [
        (
            "CREATE TABLE partials (controls_id UUID, channel INT)",
            "\"partials\" exists but table \"controls\" does not",
        ),
        (
            "CREATE TABLE controls (id UUID PRIMARY KEY)",
            "has no column \"controls_id\"",
        ),
        (
            "CREATE TABLE controls (controls_id UUID)",
            "neither the primary key",
        ),
    ] {
        let db = TestDb::create().await;
        let mut c = db.client().await;
        c.batch_execute(setup).await.expect("setup");
        let e = migrate(&mut c).await.expect_err(setup);
        match &e {
            MigrateError::Failed { version, name, .. } => {
                assert_eq!(*version, 1);
                assert_eq!(name, "machine_state_and_operations");
            }
            other => panic!("{setup}: expected Failed, got {other:?}"),
        }
        let text = e.to_string();
        assert!(text.contains(fragment), "`{fragment}` not in: {text}");
        assert!(text.contains("V1__machine_state_and_operations"), "{text}");
        assert!(!table_exists(&c, "machine_state").await, "rolled back");
        let e = check_migrated(&c).await.expect_err("not migrated");
        assert!(
            matches!(e, MigrateError::NotMigrated { current: None, .. }),
            "{e:?}"
        );
    }
}

// ------------------------------------------------------------------ check

#[tokio::test]
async fn check_migrated_says_what_to_run_and_recognises_a_current_database() {
    let db = TestDb::create().await;
    let mut c = db.client().await;
    let e = check_migrated(&c).await.expect_err("empty database");
    let text = e.to_string();
    assert!(text.contains("not migrated"), "{text}");
    assert!(
        text.contains("stringdriverd migrate --config FILE"),
        "{text}"
    );
    assert!(
        !table_exists(&c, "refinery_schema_history").await,
        "the check writes nothing"
    );

    migrate(&mut c).await.expect("migrate");
    let info = check_migrated(&c).await.expect("migrated");
    assert_eq!(info.version, latest_version());
    assert_eq!(info.controls_id, ControlsIdType::Uuid);

    // One version behind, as after an upgrade of the daemon.
    let latest = latest_version();
    c.execute(
        "DELETE FROM refinery_schema_history WHERE version = $1",
        &[&latest],
    )
    .await
    .expect("rewind");
    let text = check_migrated(&c).await.expect_err("behind").to_string();
    assert!(
        text.contains(&format!("version {} of {latest}", latest - 1)),
        "{text}"
    );
    assert!(
        text.contains("stringdriverd migrate --config FILE"),
        "{text}"
    );
}

#[tokio::test]
async fn a_database_migrated_by_a_newer_daemon_is_refused() {
    let (_db, mut c) = migrated().await;
    let latest = latest_version();
    c.execute(
        "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
         VALUES ($1, 'from_the_future', '2030-01-01T00:00:00Z', '1')",
        &[&(latest + 1)],
    )
    .await
    .expect("pretend a newer daemon migrated");
    let e = check_migrated(&c).await.expect_err("ahead");
    assert!(
        matches!(
            e,
            MigrateError::Ahead { current, latest: l } if current == latest + 1 && l == latest
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("newer"), "{e}");
    let e = migrate(&mut c).await.expect_err("ahead");
    assert!(matches!(e, MigrateError::Ahead { .. }), "{e:?}");
}

#[tokio::test]
async fn an_edited_migration_is_reported_as_divergent() {
    let (_db, mut c) = migrated().await;
    c.batch_execute("UPDATE refinery_schema_history SET checksum = '42' WHERE version = 1")
        .await
        .expect("tamper");
    let e = check_migrated(&c).await.expect_err("divergent");
    assert!(
        matches!(e, MigrateError::Divergent { version: 1, .. }),
        "{e:?}"
    );
    let e = migrate(&mut c).await.expect_err("divergent");
    assert!(
        matches!(e, MigrateError::Divergent { version: 1, .. }),
        "{e:?}"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_a_database_error() {
    let db = TestDb::create().await;
    let c = db.client().await;
    // Terminating our own session makes every later statement fail.
    let _ = c
        .batch_execute("SELECT pg_terminate_backend(pg_backend_pid())")
        .await;
    let e = check_migrated(&c).await.expect_err("no session");
    assert!(
        matches!(e, MigrateError::Database { code: None, .. }),
        "{e:?}"
    );
}

// ------------------------------------------------------------------ queries

#[tokio::test]
async fn the_documents_first_query_needs_its_trailing_comma_removed() {
    let (_db, c) = migrated().await;
    let e = c
        .query(QUERY_DATASET, &[])
        .await
        .expect_err("verbatim text");
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code(), &tokio_postgres::error::SqlState::SYNTAX_ERROR);
    assert!(db.message().contains("FROM"), "{}", db.message());
}

#[tokio::test]
async fn the_documented_queries_run_on_an_empty_database() {
    let (_db, c) = migrated().await;
    for q in [
        query_dataset_runnable().as_str(),
        QUERY_HISTORY,
        QUERY_CALIBRATIONS,
    ] {
        let rows = c
            .query(q, &[])
            .await
            .unwrap_or_else(|e| panic!("{e:?}\n{q}"));
        assert!(rows.is_empty());
    }
}

#[tokio::test]
async fn the_documented_queries_return_the_linked_rows() {
    use chrono::{DateTime, Utc};
    use uuid::Uuid;

    let (_db, c) = migrated().await;
    let frame = "11111111-1111-4111-8111-111111111111";
    let unlinked_frame = "44444444-4444-4444-8444-444444444444";
    let other_host_frame = "55555555-5555-4555-8555-555555555555";
    let state = "22222222-2222-4222-8222-222222222222";
    let other_state = "66666666-6666-4666-8666-666666666666";
    let mut sql = format!(
        "INSERT INTO controls VALUES
             ('{frame}', 'stringdriver-3', '2025-01-15T12:00:00Z'),
             ('{unlinked_frame}', 'stringdriver-3', '2025-01-16T12:00:00Z'),
             ('{other_host_frame}', 'stringdriver-1', '2025-01-15T12:00:00Z');
         INSERT INTO partials VALUES
             ('{frame}', 1, 1, 221.0, 0.125),
             ('{frame}', 0, 1, 220.0, 0.25),
             ('{frame}', 1, 0, 111.0, 0.375),
             ('{frame}', 0, 0, 110.0, 0.5),
             ('{unlinked_frame}', 0, 0, 110.0, 0.5),
             ('{other_host_frame}', 0, 0, 110.0, 0.5);
         {};
         {};",
        machine_state_insert(
            state,
            &format!("'{frame}'"),
            "stringdriver-3",
            "2025-01-15T12:00:00Z"
        ),
        machine_state_insert(
            other_state,
            &format!("'{other_host_frame}'"),
            "stringdriver-1",
            "2025-01-15T12:00:00Z"
        ),
    );
    // Operations: two recent on stringdriver-3 (one without a state), one
    // too old, one of another host; and 12 completed calibrations.
    sql.push_str(&format!(
        "INSERT INTO operations (operation_id, state_id, host, recorded_at, operation_type,
                                 operation_status, message, stepper_indices, final_positions)
         VALUES
             (gen_random_uuid(), '{state}', 'stringdriver-3', now() - interval '1 hour',
              'z_adjust', 'completed', NULL, '{{1,2}}', '{{11,21}}'),
             (gen_random_uuid(), NULL, 'stringdriver-3', now() - interval '2 days',
              'bump_check', 'failed', 'stalled', '{{3}}', '{{0}}'),
             (gen_random_uuid(), '{state}', 'stringdriver-3', now() - interval '8 days',
              'z_adjust', 'completed', NULL, '{{1}}', '{{1}}'),
             (gen_random_uuid(), NULL, 'stringdriver-1', now() - interval '1 hour',
              'z_adjust', 'completed', NULL, '{{1}}', '{{1}}');
         INSERT INTO operations (operation_id, state_id, host, recorded_at, operation_type,
                                 operation_status, message, stepper_indices, final_positions)
         SELECT gen_random_uuid(), NULL, 'stringdriver-3',
                '2025-02-01T00:00:00Z'::timestamptz + n * interval '1 minute',
                'z_calibrate', 'completed', 'calibration ' || n, ARRAY[n], ARRAY[0]
         FROM generate_series(1, 12) AS n;
         INSERT INTO operations (operation_id, state_id, host, recorded_at, operation_type,
                                 operation_status, message, stepper_indices, final_positions)
         VALUES (gen_random_uuid(), NULL, 'stringdriver-3', '2025-03-01T00:00:00Z',
                 'z_calibrate', 'failed', 'newest, but failed', '{{1}}', '{{0}}');"
    ));
    c.batch_execute(&sql).await.expect("data");

    // Dataset: the linked frame's four partials in channel, partial order.
    let rows = c
        .query(query_dataset_runnable().as_str(), &[])
        .await
        .expect("dataset");
    /// controls_id, channel, frequency, amplitude, positions, z_up_step, adjustment_level
    type DatasetRow = (Uuid, i32, f32, f32, Vec<i32>, i32, i32);
    let got: Vec<DatasetRow> = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
            )
        })
        .collect();
    let f = Uuid::parse_str(frame).expect("uuid");
    let p = vec![10, 20, 30];
    assert_eq!(
        got,
        [
            (f, 0, 110.0, 0.5, p.clone(), 2, 4),
            (f, 0, 220.0, 0.25, p.clone(), 2, 4),
            (f, 1, 111.0, 0.375, p.clone(), 2, 4),
            (f, 1, 221.0, 0.125, p.clone(), 2, 4),
        ]
    );
    let at: DateTime<Utc> = rows[0].get(1);
    assert_eq!(at.to_rfc3339(), "2025-01-15T12:00:00+00:00");

    // History: the two recent operations of stringdriver-3, newest first;
    // the one without a state has no initial positions.
    let rows = c.query(QUERY_HISTORY, &[]).await.expect("history");
    /// type, status, stepper_indices, final_positions, initial_positions
    type HistoryRow = (String, String, Vec<i32>, Vec<i32>, Option<Vec<i32>>);
    let got: Vec<HistoryRow> = rows
        .iter()
        .map(|r| (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    assert_eq!(
        got,
        [
            (
                "z_adjust".to_string(),
                "completed".to_string(),
                vec![1, 2],
                vec![11, 21],
                Some(vec![10, 20, 30])
            ),
            (
                "bump_check".to_string(),
                "failed".to_string(),
                vec![3],
                vec![0],
                None
            ),
        ]
    );

    // Calibrations: the ten newest completed ones.
    let rows = c
        .query(QUERY_CALIBRATIONS, &[])
        .await
        .expect("calibrations");
    let got: Vec<(String, Option<String>, Vec<i32>)> = rows
        .iter()
        .map(|r| (r.get(1), r.get(2), r.get(3)))
        .collect();
    let expected: Vec<(String, Option<String>, Vec<i32>)> = (3..=12)
        .rev()
        .map(|n| {
            (
                "z_calibrate".to_string(),
                Some(format!("calibration {n}")),
                vec![n],
            )
        })
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn deleting_a_parent_row_nulls_the_link_and_keeps_the_child() {
    let (_db, c) = migrated().await;
    let frame = "11111111-1111-4111-8111-111111111111";
    let state = "22222222-2222-4222-8222-222222222222";
    c.batch_execute(&format!(
        "INSERT INTO controls VALUES ('{frame}', 'stringdriver-3', now());
         INSERT INTO partials VALUES ('{frame}', 0, 0, 110, 0.5);
         {};
         INSERT INTO operations (operation_id, state_id, host, recorded_at, operation_type,
                                 operation_status, stepper_indices, final_positions)
         VALUES ('77777777-7777-4777-8777-777777777777', '{state}', 'stringdriver-3', now(),
                 'z_adjust', 'started', '{{1}}', '{{1}}');",
        machine_state_insert(state, &format!("'{frame}'"), "stringdriver-3", "now")
    ))
    .await
    .expect("data");

    c.batch_execute("DELETE FROM controls")
        .await
        .expect("delete controls");
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM machine_state WHERE controls_id IS NULL"
        )
        .await,
        1,
        "machine_state is kept, unlinked"
    );
    assert_eq!(
        count(&c, "SELECT count(*) FROM partials").await,
        0,
        "audmon's partials go with their frame"
    );

    c.batch_execute("DELETE FROM machine_state")
        .await
        .expect("delete machine_state");
    assert_eq!(
        count(&c, "SELECT count(*) FROM operations WHERE state_id IS NULL").await,
        1,
        "the operation is kept, unlinked"
    );
}

// ------------------------------------------------------------------ stepper roles

/// stringdriver-2: a 13-stepper carriage board and a 6-stepper tuner board.
fn stringdriver_2(strings: usize, tuner_steppers: usize) -> config::Config {
    let text = format!(
        r#"
host = "stringdriver-2"

[[boards]]
name = "carriage"
port = "/dev/ttyACM0"
int_bytes = 2
firmware = "v2"
steppers = 13

[[boards]]
name = "tuner"
port = "/dev/ttyACM1"
int_bytes = 4
firmware = "tuner"
steppers = {tuner_steppers}

[layout]
strings = {strings}
x_index = 0
x_max = 2600
z_first_index = 1
tuner_first_index = 13
"#
    );
    config::parse(&text, Path::new("test.toml")).expect("configuration")
}

type RoleRow = (i32, String, i32, String, Option<i32>);

async fn role_rows(c: &Client, host: &str) -> Vec<RoleRow> {
    c.query(
        "SELECT stepper_index, board::text, local_index, role::text, string_index \
         FROM stepper_roles WHERE host = $1 ORDER BY stepper_index",
        &[&host],
    )
    .await
    .expect("stepper_roles")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

async fn updated_at(c: &Client, host: &str) -> Vec<chrono::DateTime<chrono::Utc>> {
    c.query(
        "SELECT updated_at FROM stepper_roles WHERE host = $1 ORDER BY stepper_index",
        &[&host],
    )
    .await
    .expect("updated_at")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn the_stepper_map_is_written_once_and_follows_layout_changes() {
    let (_db, c) = migrated().await;
    let full = stringdriver_2(6, 6);
    // Another host's map must survive this host's syncs.
    assert_eq!(
        sync_stepper_roles(&c, "stringdriver-1", &full)
            .await
            .expect("other host"),
        19
    );

    assert_eq!(
        sync_stepper_roles(&c, "stringdriver-2", &full)
            .await
            .expect("first sync"),
        19
    );
    let rows = role_rows(&c, "stringdriver-2").await;
    let row = |i: i32, board: &str, local: i32, role: &str, string: Option<i32>| -> RoleRow {
        (i, board.to_string(), local, role.to_string(), string)
    };
    let mut expected = vec![row(0, "carriage", 0, "x", None)];
    for s in 0..6 {
        expected.push(row(1 + 2 * s, "carriage", 1 + 2 * s, "z_in", Some(s)));
        expected.push(row(2 + 2 * s, "carriage", 2 + 2 * s, "z_out", Some(s)));
    }
    for s in 0..6 {
        expected.push(row(13 + s, "tuner", s, "tuner", Some(s)));
    }
    assert_eq!(rows, expected);
    let first = updated_at(&c, "stringdriver-2").await;

    assert_eq!(
        sync_stepper_roles(&c, "stringdriver-2", &full)
            .await
            .expect("second sync"),
        0,
        "nothing changed"
    );
    assert_eq!(updated_at(&c, "stringdriver-2").await, first);

    // Four strings, and a tuner board with four steppers: Z pairs 4 and 5
    // become unused, tuners 17 and 18 are gone.
    let smaller = stringdriver_2(4, 4);
    assert_eq!(
        sync_stepper_roles(&c, "stringdriver-2", &smaller)
            .await
            .expect("third sync"),
        4 + 2
    );
    let rows = role_rows(&c, "stringdriver-2").await;
    assert_eq!(rows.len(), 17);
    for i in 9..=12 {
        assert_eq!(rows[i as usize], row(i, "carriage", i, "unused", None));
    }
    assert_eq!(rows[16], row(16, "tuner", 3, "tuner", Some(3)));
    let third = updated_at(&c, "stringdriver-2").await;
    for i in 0..17 {
        if (9..=12).contains(&i) {
            assert!(third[i] > first[i], "changed row {i} is stamped");
        } else {
            assert_eq!(third[i], first[i], "unchanged row {i} keeps its stamp");
        }
    }
    assert_eq!(
        sync_stepper_roles(&c, "stringdriver-2", &smaller)
            .await
            .expect("fourth sync"),
        0
    );
    assert_eq!(role_rows(&c, "stringdriver-1").await.len(), 19);
}

// ------------------------------------------------------------------ connection settings

const SECRET: &str = "s3cr3t-Pa55word";

fn password_file() -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    writeln!(f, "{SECRET}").expect("write");
    f
}

fn database(target: DatabaseTarget, password_file: Option<&Path>) -> DatabaseConfig {
    DatabaseConfig {
        target,
        password_file: password_file.map(Path::to_path_buf),
        auto_migrate: false,
        connect_timeout: Duration::from_secs(3),
        tls: config::DatabaseTls::new(config::SslMode::Disable),
    }
}

fn assert_no_secret(what: &str, text: &str) {
    assert!(!text.contains(SECRET), "{what} shows the password: {text}");
}

#[tokio::test]
async fn pg_config_reads_the_url_or_the_parts_and_the_password_file() {
    let file = password_file();
    let url = database(
        DatabaseTarget::Url("postgres://stringdriver@db.example:6543/audmon".into()),
        Some(file.path()),
    );
    let cfg = pg_config(&url).expect("url");
    assert_eq!(cfg.get_user(), Some("stringdriver"));
    assert_eq!(cfg.get_dbname(), Some("audmon"));
    assert_eq!(cfg.get_ports(), [6543]);
    assert_eq!(
        cfg.get_password(),
        Some(SECRET.as_bytes()),
        "newline dropped"
    );
    assert_eq!(cfg.get_connect_timeout(), Some(&Duration::from_secs(3)));
    assert_eq!(cfg.get_application_name(), Some("stringdriverd"));
    assert_eq!(
        describe(&cfg),
        "db.example:6543/audmon as user stringdriver"
    );
    assert_no_secret("describe", &describe(&cfg));
    assert_no_secret("Debug", &format!("{cfg:?}"));

    let parts = database(
        DatabaseTarget::Parts {
            host: "127.0.0.1".into(),
            port: 5432,
            user: "postgres".into(),
            dbname: "audmon".into(),
        },
        None,
    );
    let cfg = pg_config(&parts).expect("parts");
    assert_eq!(cfg.get_password(), None);
    assert_eq!(describe(&cfg), "127.0.0.1:5432/audmon as user postgres");
    assert_eq!(cfg.get_application_name(), Some("stringdriverd"));

    let e = pg_config(&database(
        DatabaseTarget::Url("postgres://db.example/audmon".into()),
        None,
    ))
    .expect_err("no user");
    assert!(matches!(e, StoreConnectError::InvalidUrl { .. }), "{e:?}");
    assert!(e.to_string().contains("no user"), "{e}");

    let missing = Path::new("/nonexistent/stringdriverd/password");
    let e = pg_config(&database(
        DatabaseTarget::Url("postgres://u@db/x".into()),
        Some(missing),
    ))
    .expect_err("no password file");
    assert!(matches!(e, StoreConnectError::Password(_)), "{e:?}");
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );
}

#[tokio::test]
async fn connection_errors_name_the_server_and_never_the_password() {
    let file = password_file();
    let db = TestDb::create().await;
    let host = db.config.get_hosts().first().map(|h| match h {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
    });
    let host = host.unwrap_or_else(|| "127.0.0.1".to_string());
    let port = db.config.get_ports().first().copied().unwrap_or(5432);
    let user = db.config.get_user().unwrap_or("postgres").to_string();

    // The private database, with a password (ignored under trust auth).
    let good = pg_config(&database(
        DatabaseTarget::Parts {
            host: host.clone(),
            port,
            user: user.clone(),
            dbname: db.name.clone(),
        },
        Some(file.path()),
    ))
    .expect("config");
    let c = connect(&good).await.expect("connects");
    let app: String = c
        .query_one("SELECT current_setting('application_name')", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(app, "stringdriverd");

    // A database that does not exist: the server's own message.
    let mut no_db = good.clone();
    no_db.dbname("sdtest_no_such_database");
    let e = connect(&no_db).await.expect_err("no database");
    let text = e.to_string();
    assert!(text.contains(&describe(&no_db)), "{text}");
    assert!(text.contains("does not exist"), "{text}");
    assert!(text.contains("3D000"), "{text}");
    assert_no_secret("Display", &text);
    assert_no_secret("Debug", &format!("{e:?}"));

    // Nothing listening: the OS error.
    let refused = pg_config(&database(
        DatabaseTarget::Parts {
            host: "127.0.0.1".into(),
            port: 1,
            user: user.clone(),
            dbname: "x".into(),
        },
        Some(file.path()),
    ))
    .expect("config");
    let e = connect(&refused).await.expect_err("refused");
    let text = e.to_string();
    assert!(text.contains("127.0.0.1:1/x as user"), "{text}");
    assert!(text.to_lowercase().contains("refused"), "{text}");
    assert_no_secret("Display", &text);
    assert_no_secret("Debug", &format!("{e:?}"));
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    // Accepts the TCP connection and then says nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut db = database(
        DatabaseTarget::Parts {
            host: "127.0.0.1".into(),
            port,
            user: "u".into(),
            dbname: "x".into(),
        },
        None,
    );
    db.connect_timeout = Duration::from_millis(300);
    let cfg = pg_config(&db).expect("config");
    let started = std::time::Instant::now();
    let e = connect(&cfg).await.expect_err("silent server");
    assert!(matches!(e, StoreConnectError::Timeout { .. }), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    held.abort();
}
