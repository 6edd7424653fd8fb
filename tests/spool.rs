//! The spool on real files: durability across reopen, order, thinning at the
//! size limit, a full disk, damaged files, and a model of its contents.

mod common;

use std::collections::VecDeque;
use std::io::{Seek, SeekFrom, Write};

use common::records::*;
use proptest::prelude::*;
use stringdriverd::store::{OperationStatus, Record, Spool, SpoolError};

const BIG: u64 = 1 << 30;

fn open(path: &std::path::Path, limit: u64) -> Spool {
    let (s, damage) = Spool::open(path, limit).expect("opens");
    assert!(damage.is_none(), "unexpected damage: {damage:?}");
    s
}

fn contents(s: &mut Spool) -> Vec<Record> {
    s.peek(usize::MAX >> 1)
        .expect("peek")
        .into_iter()
        .map(|x| x.record)
        .collect()
}

#[test]
fn records_survive_reopen_in_capture_order_until_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("spool.sqlite");
    let recs: Vec<Record> = (0..10)
        .map(|i| {
            if i % 3 == 2 {
                op(i, Some(i - 1), OperationStatus::Started, i as i64)
            } else {
                timer(i, i as i64)
            }
        })
        .collect();
    {
        let mut s = open(&path, BIG);
        let seqs = s.append(&recs[..4]).expect("append");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        s.append(&recs[4..]).expect("append");
    }
    let mut s = open(&path, BIG);
    assert_eq!(contents(&mut s), recs);
    let first = s.peek(3).expect("peek");
    s.remove(&first).expect("remove");
    drop(s);
    let mut s = open(&path, BIG);
    assert_eq!(contents(&mut s), recs[3..].to_vec());
    let st = s.status().expect("status");
    assert_eq!(st.backlog, 7);
    assert_eq!(st.shipped_snapshots, 2);
    assert_eq!(st.shipped_operations, 1);
    assert_eq!(st.oldest, Some(recs[3].recorded_at()));
}

#[test]
fn sequence_numbers_are_never_reused_after_the_spool_empties() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = open(&dir.path().join("s.sqlite"), BIG);
    let a = s.append(&[timer(1, 0)]).expect("append");
    let all = s.peek(10).expect("peek");
    s.remove(&all).expect("remove");
    let b = s.append(&[timer(2, 1)]).expect("append");
    assert!(b[0] > a[0]);
}

#[test]
fn over_the_limit_timer_snapshots_are_thinned_and_operations_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.sqlite");
    let limit = 256 * 1024;
    let mut s = open(&path, limit);
    let mut ops = 0;
    // One snapshot every 10 s for many minutes, an operation every 50.
    let mut i = 0u64;
    while i < 3000 {
        let mut batch = vec![timer(i, i as i64 * 10)];
        if i % 50 == 0 {
            batch.push(op(i, None, OperationStatus::Completed, i as i64 * 10));
            ops += 1;
        }
        match s.append(&batch) {
            Ok(_) | Err(SpoolError::Full { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        i += 1;
    }
    let st = s.status().expect("status");
    assert!(st.thinned > 0, "{st:?}");
    assert!(st.used_bytes <= limit + 64 * 1024, "{st:?}");
    let kept = contents(&mut s);
    let kept_ops = kept
        .iter()
        .filter(|r| matches!(r, Record::Operation { .. }))
        .count();
    assert_eq!(kept_ops, ops, "every operation record is kept");
    // The older half went through thinning: at most one timer snapshot per
    // minute survived there (recent ones are kept dense until the next pass).
    let half = common::records::t0() + chrono::Duration::seconds(3000 * 10 / 2);
    let mut minutes: Vec<i64> = kept
        .iter()
        .filter(|r| r.thinnable() && r.recorded_at() < half)
        .map(|r| r.recorded_at().timestamp() / 60)
        .collect();
    let n = minutes.len();
    assert!(
        n > 0,
        "thinning keeps some old snapshots, it does not drop the oldest data"
    );
    minutes.dedup();
    assert_eq!(
        minutes.len(),
        n,
        "more than one timer snapshot per minute survived thinning"
    );
}

#[test]
fn a_full_disk_is_an_error_and_capture_resumes_when_space_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = open(&dir.path().join("s.sqlite"), BIG);
    s.append(&[timer(0, 0)]).expect("append");
    let pages = s.used_bytes().expect("size") / 4096 + 1;
    // SQLite's page limit gives the same SQLITE_FULL as ENOSPC does.
    s.set_max_pages(pages).expect("pragma");
    let mut failed = None;
    for i in 1..2000 {
        if let Err(e) = s.append(&[op(i, None, OperationStatus::Started, 0)]) {
            failed = Some(e);
            break;
        }
    }
    let e = failed.expect("the disk filled up");
    assert!(matches!(e, SpoolError::DiskFull { .. }), "{e}");
    assert!(e.to_string().contains("disk full"), "{e}");
    let before = s.status().expect("status").backlog;
    s.set_max_pages(1 << 30).expect("pragma");
    s.append(&[op(99_999, None, OperationStatus::Started, 0)])
        .expect("capture resumes");
    assert_eq!(s.status().expect("status").backlog, before + 1);
}

fn fill(path: &std::path::Path, n: u64) -> Vec<Record> {
    let recs: Vec<Record> = (0..n).map(|i| timer(i, i as i64)).collect();
    let mut s = open(path, BIG);
    for chunk in recs.chunks(50) {
        s.append(chunk).expect("append");
    }
    recs
}

#[test]
fn a_truncated_spool_file_is_reported_and_every_intact_record_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.sqlite");
    let recs = fill(&path, 2000);
    let len = std::fs::metadata(&path).expect("meta").len();
    assert!(
        len > 200_000,
        "the records live in the main file after close ({len} bytes)"
    );
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_len(len / 2).expect("truncate");
    drop(f);
    let (mut s, damage) = Spool::open(&path, BIG).expect("opens anyway");
    let damage = damage.expect("the damage is reported");
    assert!(damage.moved_to.exists(), "the damaged file is kept");
    assert!(damage.salvaged > 0, "{damage:?}");
    let kept = contents(&mut s);
    assert_eq!(kept.len() as u64, damage.salvaged);
    // Whatever survived is exact and in order.
    for r in &kept {
        let Record::MachineState { row, .. } = r else {
            panic!()
        };
        let i = recs
            .iter()
            .position(|x| x == r)
            .expect("an original record");
        assert_eq!(row.state_id, common::records::id(1, i as u64));
    }
    assert!(kept
        .windows(2)
        .all(|w| w[0].recorded_at() < w[1].recorded_at()));
    // And the spool works again.
    s.append(&[timer(5000, 5000)])
        .expect("append after salvage");
}

#[test]
fn a_bit_flipped_record_goes_to_the_dead_letters_and_the_rest_stay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.sqlite");
    let recs = fill(&path, 50);
    // Find one payload's bytes in the file and flip a bit inside them.
    let bytes = std::fs::read(&path).expect("read");
    let needle = serde_json_bytes(&recs[20]);
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .expect("payload on disk");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.seek(SeekFrom::Start((at + needle.len() / 2) as u64))
        .expect("seek");
    f.write_all(&[bytes[at + needle.len() / 2] ^ 0x04])
        .expect("flip");
    drop(f);
    let (mut s, damage) = Spool::open(&path, BIG).expect("opens");
    assert!(damage.is_none(), "page structure is intact: {damage:?}");
    let kept = contents(&mut s);
    assert_eq!(kept.len(), 49);
    assert!(!kept.contains(&recs[20]));
    let dead = s.dead_letters().expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert!(dead[0].1.contains("checksum"), "{}", dead[0].1);
    assert_eq!(s.status().expect("status").dead_letters, 1);
}

fn serde_json_bytes(r: &Record) -> Vec<u8> {
    serde_json::to_vec(r).expect("json")
}

#[test]
fn a_spool_with_a_damaged_header_page_is_salvaged_not_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.sqlite");
    fill(&path, 500);
    let mut bytes = std::fs::read(&path).expect("read");
    // Scribble over the b-tree header of page 3 (some interior or leaf page).
    for b in &mut bytes[2 * 4096..2 * 4096 + 12] {
        *b ^= 0xFF;
    }
    std::fs::write(&path, &bytes).expect("write");
    let (mut s, damage) = Spool::open(&path, BIG).expect("opens anyway");
    let damage = damage.expect("reported");
    assert!(!damage.problem.is_empty());
    let kept = contents(&mut s).len() as u64;
    assert_eq!(kept, damage.salvaged);
    assert!(kept + damage.missing + damage.corrupt >= 1, "{damage:?}");
}

#[test]
fn a_file_that_is_not_a_spool_is_moved_aside_and_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.sqlite");
    std::fs::write(
        &path,
        b"this is not an SQLite database at all, just text that got here",
    )
    .expect("write");
    let (mut s, damage) = Spool::open(&path, BIG).expect("opens with a fresh spool");
    let damage = damage.expect("reported");
    assert!(damage.moved_to.exists());
    assert_eq!(damage.salvaged, 0);
    assert!(contents(&mut s).is_empty());
}

#[derive(Debug, Clone)]
enum Step {
    Append(u8),
    Ship(u8),
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1u8..5).prop_map(Step::Append),
        (1u8..7).prop_map(Step::Ship),
        Just(Step::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_spool_behaves_like_a_queue(steps in prop::collection::vec(step(), 1..40)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.sqlite");
        let mut s = open(&path, BIG);
        let mut model: VecDeque<Record> = VecDeque::new();
        let mut next = 0u64;
        for st in steps {
            match st {
                Step::Append(n) => {
                    let recs: Vec<Record> = (0..n as u64).map(|k| {
                        next += 1;
                        if (next + k) % 4 == 0 { op(next, None, OperationStatus::Started, next as i64) } else { timer(next, next as i64) }
                    }).collect();
                    s.append(&recs).expect("append");
                    model.extend(recs);
                }
                Step::Ship(n) => {
                    let batch = s.peek(n as usize).expect("peek");
                    let want: Vec<Record> = model.iter().take(n as usize).cloned().collect();
                    prop_assert_eq!(batch.iter().map(|b| b.record.clone()).collect::<Vec<_>>(), want);
                    s.remove(&batch).expect("remove");
                    for _ in 0..batch.len() { model.pop_front(); }
                }
                Step::Reopen => {
                    drop(s);
                    s = open(&path, BIG);
                }
            }
            prop_assert_eq!(s.status().expect("status").backlog, model.len() as u64);
        }
        prop_assert_eq!(contents(&mut s), model.into_iter().collect::<Vec<_>>());
    }
}

#[test]
fn captured_totals_account_for_every_append_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("spool.sqlite");
    let mut s = open(&path, BIG);
    s.append(&[timer(0, 0), event_snapshot(1, 1)])
        .expect("append");
    s.append(&[op(0, Some(1), OperationStatus::Started, 2)])
        .expect("append");
    let shipped = s.peek(2).expect("peek");
    s.remove(&shipped).expect("remove");
    drop(s);
    let mut s = open(&path, BIG);
    s.append(&[op(0, Some(1), OperationStatus::Completed, 3)])
        .expect("append");
    let st = s.status().expect("status");
    assert_eq!((st.captured_snapshots, st.captured_operations), (2, 2));
    assert_eq!((st.shipped_snapshots, st.shipped_operations), (2, 0));
    assert_eq!(st.backlog, 2);
    assert_eq!(
        st.captured_snapshots + st.captured_operations,
        st.shipped_snapshots + st.shipped_operations + st.backlog + st.thinned + st.dead_letters
    );
}

#[test]
fn an_operation_run_here_stays_running_until_its_final_event_even_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("spool.sqlite");
    let mut s = open(&path, BIG);
    s.append_run_here(&[op(1, None, OperationStatus::Started, 0)])
        .expect("append");
    // Reported by another tool: the daemon does not own it.
    s.append(&[op(2, None, OperationStatus::Started, 0)])
        .expect("append");
    drop(s); // the daemon is killed here
    let mut s = open(&path, BIG);
    let running = s.running_operations().expect("running");
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0].operation_id, id(2, 1));
    assert_eq!(running[0].operation_status, OperationStatus::Started);
    assert_eq!(s.status().expect("status").running_operations, 1);
    // Its final event, appended either way, ends it.
    s.append(&[op(1, None, OperationStatus::Failed, 5)])
        .expect("append");
    assert!(s.running_operations().expect("running").is_empty());
    assert_eq!(s.status().expect("status").running_operations, 0);
}
