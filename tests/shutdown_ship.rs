//! A clean stop with the database up: the final snapshot, captured at
//! shutdown, reaches PostgreSQL within the stop instead of waiting in the
//! spool for the next start. In-process daemon, simulated boards, real
//! PostgreSQL.

mod common;

use common::machine::{set_pose, InProcess, MachineOptions, SimMachine, WAIT};
use common::pg::TestDb;

const HOST: &str = "sd-final-ship";

async fn row_count(db: &TestDb) -> i64 {
    db.client()
        .await
        .query_one(
            "SELECT count(*) FROM machine_state WHERE host = $1",
            &[&HOST],
        )
        .await
        .expect("count")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_shutdown_snapshot_is_shipped_when_the_database_is_up() {
    let db = TestDb::create().await;
    let mut o = MachineOptions::new(HOST);
    o.db_url = Some(db.url());
    let machine = SimMachine::start(o);
    let run = InProcess::start(&machine).await;
    set_pose(&run.parts).await;
    // The shipper is connected and has shipped: rows are in PostgreSQL.
    let deadline = tokio::time::Instant::now() + WAIT;
    while row_count(&db).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no row shipped");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let snapshots = run.parts.snapshots.clone();
    run.stop().await;
    let st = snapshots.status();

    let spool =
        stringdriverd::store::Spool::open_read_only(&machine.dir.path().join("spool.sqlite"))
            .expect("spool");
    let status = spool.status().expect("spool status");
    assert_eq!(
        status.backlog, 0,
        "everything captured, the final snapshot included, was shipped: {status:?}"
    );
    // Every captured row (timer, events, and the shutdown snapshot among
    // the events) is in PostgreSQL: counted after the stop, nothing races.
    assert_eq!(row_count(&db).await as u64, st.timer + st.events, "{st:?}");
}
