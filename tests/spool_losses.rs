//! Issue 15 item 5: captures a full disk kept out of the spool are on
//! record, by reason, where `spool-status` reads them.

mod common;

use std::process::Command;

use common::records::*;
use stringdriverd::store::{OperationStatus, Spool, SpoolError, SpoolHandle};

#[tokio::test]
async fn captures_lost_to_a_full_disk_are_counted_and_shown_by_spool_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = common::demo_config(dir.path(), "postgres://postgres@127.0.0.1:1/nothing");
    let path = dir.path().join("spool.sqlite");
    let (s, _) = Spool::open(&path, 1 << 30).expect("spool");
    let spool = SpoolHandle::new(s);
    spool.append(vec![timer(0, 0)]).await.expect("append");
    let pages = spool.status().await.expect("status").used_bytes / 4096 + 1;
    // SQLite's page limit gives the same SQLITE_FULL as ENOSPC does.
    spool.set_max_pages(pages).await.expect("pragma");
    let mut lost = 0u64;
    let mut i = 1;
    while lost < 5 {
        assert!(i < 5000, "the disk never filled up");
        match spool
            .append(vec![op(i, None, OperationStatus::Started, 0)])
            .await
        {
            Ok(_) => {}
            Err(e @ SpoolError::DiskFull { .. }) => {
                assert!(e.to_string().contains("disk full"), "{e}");
                lost += 1;
            }
            Err(e) => panic!("not a full disk: {e}"),
        }
        i += 1;
    }
    // The daemon's status counts them while the disk is full.
    let st = spool.status().await.expect("status");
    assert_eq!(st.lost_captures, lost, "{st:?}");
    assert_eq!(st.lost.get("disk_full"), Some(&lost), "{st:?}");

    // Space returns: the next capture writes the count into the file.
    spool.set_max_pages(1 << 30).await.expect("pragma");
    spool
        .append(vec![timer(99_999, 1)])
        .await
        .expect("capture resumes");
    drop(spool);

    let o = Command::new(env!("CARGO_BIN_EXE_stringdriverd"))
        .args(["spool-status", "--json", "--config"])
        .arg(&cfg)
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["lost_captures"].as_u64(), Some(lost), "{v}");
    assert_eq!(v["lost"]["disk_full"].as_u64(), Some(lost), "{v}");
    let o = Command::new(env!("CARGO_BIN_EXE_stringdriverd"))
        .args(["spool-status", "--config"])
        .arg(&cfg)
        .output()
        .expect("runs");
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .find(|l| l.starts_with("lost captures"))
        .unwrap_or_else(|| panic!("no lost captures line: {out}"));
    assert!(
        line.contains(&format!("{lost} (disk_full: {lost})")),
        "{line}"
    );
}
