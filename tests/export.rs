//! `stringdriverd export` against a real PostgreSQL: generated recordings
//! (tests/common/recordings.rs) exported and checked row by row against an
//! as-of join computed in SQL, independently of the exporter's query.

mod common;

use common::recordings::{self, Recording};

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
