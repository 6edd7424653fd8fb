//! Issue 15 items 1 and 2: the shipper never stays stuck on a database
//! connection that stopped answering, nor behind a session of its own that
//! the server kept (real PostgreSQL behind a proxy the test controls).

mod common;

use std::time::Duration;

use common::records::*;
use common::shipping::*;
use stringdriverd::store::ship::ShipperOptions;
use stringdriverd::store::Record;

fn timers(from: u64, to: u64) -> Vec<Record> {
    (from..to).map(|i| timer(i, i as i64)).collect()
}

/// Short deadlines, from the options, so that a stall is seen in about a second.
fn short_deadlines() -> ShipperOptions {
    ShipperOptions {
        deadline_base: Duration::from_secs(1),
        deadline_per_record: Duration::from_millis(2),
        ..quick()
    }
}

#[tokio::test]
async fn a_frozen_connection_is_dropped_at_its_deadline_and_shipping_resumes() {
    let opts = short_deadlines();
    let deadline = opts.deadline(opts.batch_size);
    let mut r = ProxiedShipper::start(opts).await;
    let (spool, rx, proxy, db) = (&r.spool, &mut r.rx, &r.proxy, &r.db);
    spool.append(timers(0, 50)).await.expect("append");
    wait_status(rx, |s| s.shipped == 50).await;

    // The open connection hears nothing more; new ones go through.
    proxy.freeze();
    let frozen_at = tokio::time::Instant::now();
    spool.append(timers(50, 100)).await.expect("append");
    let s = wait_status(rx, |s| s.stalls >= 1).await;
    assert!(s.last_stall_at.is_some(), "{s:?}");
    let s = wait_status(rx, |s| s.shipped == 100).await;
    // Within the deadline, a reconnection and a retry (the deadlines are
    // short; the bound is generous for a loaded machine).
    assert!(
        frozen_at.elapsed() < deadline * 2 + Duration::from_secs(10),
        "shipping resumed only after {:?}",
        frozen_at.elapsed()
    );
    wait_rows(db, "machine_state", 100).await;
    // Recovered: no error stands, neither in the status nor in the spool.
    assert_eq!(s.last_error, None, "{s:?}");
    assert_eq!(s.error_since, None, "{s:?}");
    assert_eq!(spool.status().await.expect("status").last_error, None);
    r.stop().await;
}

#[tokio::test]
async fn the_stall_stands_in_the_status_and_the_spool_while_it_lasts() {
    let mut r = ProxiedShipper::start(short_deadlines()).await;
    let (spool, rx, proxy) = (&r.spool, &mut r.rx, &r.proxy);
    spool.append(timers(0, 10)).await.expect("append");
    wait_status(rx, |s| s.shipped == 10).await;

    // Frozen, and no new connection gets through either: the stall stays.
    proxy.freeze();
    proxy.cut_new();
    spool.append(timers(10, 20)).await.expect("append");
    let s = wait_status(rx, |s| {
        s.stalls >= 1 && s.last_error.is_some() && !s.connected
    })
    .await;
    // Since when: from the stall on (the reconnections refused since keep it).
    let since = s.error_since.expect("since when");
    assert!(since >= s.last_stall_at.expect("stall time"), "{s:?}");
    // What `spool-status` shows without the daemon.
    let deadline = tokio::time::Instant::now() + WAIT;
    let (noted, since) = loop {
        if let Some(e) = spool.status().await.expect("status").last_error {
            break e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never noted in the spool"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!noted.is_empty());
    assert!(
        chrono::DateTime::parse_from_rfc3339(&since).is_ok(),
        "{since}"
    );

    proxy.restore();
    wait_status(rx, |s| s.shipped == 20 && s.last_error.is_none()).await;
    assert_eq!(spool.status().await.expect("status").last_error, None);
    r.stop().await;
}

#[tokio::test]
async fn a_session_left_mid_commit_holding_locks_is_ended_and_reshipping_proceeds() {
    let opts = ShipperOptions {
        lock_timeout: Duration::from_millis(500),
        // Far beyond the test's bounds: only ending the session frees its locks.
        idle_in_transaction_timeout: Duration::from_secs(600),
        ..short_deadlines()
    };
    let mut r = ProxiedShipper::start(opts).await;
    let (spool, rx, proxy, db) = (&r.spool, &mut r.rx, &r.proxy, &r.db);
    spool.append(timers(0, 10)).await.expect("append");
    wait_status(rx, |s| s.shipped == 10).await;

    // The next commit never reaches the server: the client side closes, the
    // server keeps the session idle in its transaction, rows locked.
    proxy.half_open_at_commit();
    spool.append(timers(10, 60)).await.expect("append");
    let s = wait_status(rx, |s| s.shipped == 60).await;
    assert!(proxy.holds_half_open(), "the commit was never caught");
    assert!(s.sessions_ended >= 1, "{s:?}");
    wait_rows(db, "machine_state", 60).await;
    // The server no longer has a session of ours idle in a transaction.
    let left: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
             AND state LIKE 'idle in transaction%'",
            &[&db.name],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(left, 0);
    r.stop().await;
}
