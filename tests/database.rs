//! The test database harness itself: every test gets a private database that
//! is gone afterwards.

mod common;

use common::pg::TestDb;

#[tokio::test]
async fn each_test_gets_a_private_database_that_is_dropped_afterwards() {
    let db = TestDb::create().await;
    let name = db.name.clone();
    let c = db.client().await;
    c.batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .await
        .expect("usable");
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(n, 1);
    let other = TestDb::create().await;
    assert_ne!(other.name, name);
    let o = other.client().await;
    assert!(
        o.query("SELECT * FROM t", &[]).await.is_err(),
        "databases are separate"
    );
    drop(c);
    drop(db);
    let n: i64 = o
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(n, 0, "the first database was dropped");
}
