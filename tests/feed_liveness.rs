//! Liveness of the audmon feed (`reference/audmon-feed.md`, "Silence is
//! data"): a feed is judged by audmon's PID and by `audio_peaks` being
//! written, never by its content changing; and files that are not regular
//! files (a FIFO, a device) are refused at once instead of freezing the
//! reader (issue 15 item 3). Real files in a temporary directory, written by
//! the simulated audmon.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use common::feed::{dead_pid, fast_config, wait_for};
use stringdriverd::feed::{
    self, FeedMonitor, FeedState, FeedStatus, FeedValues, CONTROL_FILE, PEAKS_FILE,
};
use stringdriverd::sim::feed::FeedWriter;
use tokio_util::sync::CancellationToken;

const CHANNELS: usize = 3;
const PARTIALS: usize = 8;

fn t_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_700_000_000_000 + ms).unwrap()
}

/// Every amplitude 0: the strings are silent.
fn silence() -> Vec<Vec<(f32, f32)>> {
    vec![vec![(0.0, 0.0); PARTIALS]; CHANNELS]
}

fn zeros() -> FeedValues {
    FeedValues {
        voice_count: vec![0; CHANNELS],
        amp_sum: vec![0.0; CHANNELS],
    }
}

/// A feed directory with one silent frame written.
fn silent_feed() -> (tempfile::TempDir, FeedWriter) {
    let dir = tempfile::tempdir().unwrap();
    let mut w = FeedWriter::create(dir.path(), CHANNELS, PARTIALS).unwrap();
    w.write_frame(&silence()).unwrap();
    (dir, w)
}

fn fifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
}

/// Writes a silent frame and sets the file's modification time to `at`,
/// the time of the monitor's clock (see the first test).
fn write_at(w: &mut FeedWriter, at: DateTime<Utc>) {
    w.write_frame(&silence()).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(w.dir().join(PEAKS_FILE))
        .and_then(|f| f.set_modified(at.into()))
        .unwrap();
}

#[test]
fn identical_silent_frames_rewritten_for_ten_seconds_keep_the_feed_ok_with_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let stale_after = Duration::from_secs(2);
    let mut w = FeedWriter::create(dir.path(), CHANNELS, PARTIALS).unwrap();
    let mut m = FeedMonitor::new(dir.path(), stale_after);
    let mut bytes = None;
    // audmon at 4 frames a second for 10 s, every frame the same bytes; the
    // monitor's clock is passed in, the writes are real. Each write's time
    // is set to the passed-in clock, as the kernel would set it 250 ms
    // apart, so that a file system with coarse timestamps cannot merge
    // writes that this loop makes microseconds apart.
    let peaks = dir.path().join(PEAKS_FILE);
    for frame in 0..=40 {
        let now = t_ms(frame * 250);
        write_at(&mut w, now);
        let s = m.poll(now);
        assert_eq!(s.state, FeedState::Ok, "frame {frame}: {s:?}");
        assert_eq!(s.values, Some(zeros()), "frame {frame}");
        assert_eq!(
            s.frame_changed_at,
            Some(now),
            "frame {frame}: a write is seen"
        );
        let now_bytes = fs::read(&peaks).unwrap();
        assert!(
            bytes
                .replace(now_bytes.clone())
                .is_none_or(|b| b == now_bytes),
            "the frames are byte for byte the same"
        );
    }
}

#[test]
fn a_writer_that_stops_while_its_pid_lives_goes_stale_after_stale_after() {
    let dir = tempfile::tempdir().unwrap();
    let stale_after = Duration::from_secs(2);
    let mut w = FeedWriter::create(dir.path(), CHANNELS, PARTIALS).unwrap();
    let mut m = FeedMonitor::new(dir.path(), stale_after);
    write_at(&mut w, t_ms(0));
    assert_eq!(m.poll(t_ms(0)).state, FeedState::Ok);
    // No more writes; audmon (this process) is alive.
    let s = m.poll(t_ms(2000));
    assert_eq!(s.state, FeedState::Ok, "exactly stale_after is not longer");
    let s = m.poll(t_ms(2001));
    assert!(
        matches!(&s.state, FeedState::Stale(r) if r.contains("not written since")),
        "{s:?}"
    );
    assert_eq!(s.values, None);
    // One more write of the same bytes revives it.
    write_at(&mut w, t_ms(2400));
    let s = m.poll(t_ms(2500));
    assert_eq!((s.state, s.values), (FeedState::Ok, Some(zeros())));
}

#[test]
fn a_dead_pid_is_stale_at_once_even_while_the_file_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = FeedWriter::create(dir.path(), CHANNELS, PARTIALS).unwrap();
    let mut m = FeedMonitor::new(dir.path(), Duration::from_secs(2));
    w.write_frame(&silence()).unwrap();
    assert_eq!(m.poll(t_ms(0)).state, FeedState::Ok);
    let pid = dead_pid();
    w.set_pid(pid).unwrap();
    w.write_frame(&silence()).unwrap();
    let s = m.poll(t_ms(1));
    assert!(
        matches!(&s.state, FeedState::Stale(r) if r.contains(&format!("PID {pid}"))),
        "{s:?}"
    );
    assert_eq!(s.values, None);
}

/// The same, with the reader task and the real clock: 2.5 s of identical
/// silent frames at 20 a second against a `stale_after` of 500 ms (the
/// ratio of 10 s to the default 2 s). Every status published is ok with
/// zeros; then the writer stops and the feed goes stale no sooner than
/// `stale_after` after its last write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_task_keeps_silence_ok_and_calls_a_stopped_writer_stale() {
    let dir = tempfile::tempdir().unwrap();
    let stale_after = Duration::from_millis(500);
    let mut w = FeedWriter::create(dir.path(), CHANNELS, PARTIALS).unwrap();
    w.write_frame(&silence()).unwrap();
    let shutdown = CancellationToken::new();
    let (mut rx, task) = feed::spawn(fast_config(dir.path(), stale_after), shutdown.clone());
    wait_for(&mut rx, "ok", |s| s.state.is_ok()).await;
    rx.mark_unchanged();

    let writer = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_millis(2500);
        while Instant::now() < end {
            w.write_frame(&silence()).unwrap();
            // audmon's frame rate, not a synchronisation.
            std::thread::sleep(Duration::from_millis(50));
        }
        w.write_frame(&silence()).unwrap();
        (w, Instant::now())
    });
    let mut published = 0;
    while !writer.is_finished() {
        if tokio::time::timeout(Duration::from_millis(100), rx.changed())
            .await
            .is_ok()
        {
            let s = rx.borrow_and_update().clone();
            assert_eq!(s.state, FeedState::Ok, "{s:?}");
            assert_eq!(s.values, Some(zeros()));
            published += 1;
        }
    }
    let (_w, last_write) = writer.join().unwrap();
    assert!(published > 5, "the writes were seen ({published} statuses)");
    assert!(rx.borrow().state.is_ok(), "{:?}", *rx.borrow());

    let s = wait_for(&mut rx, "stale", |s| matches!(s.state, FeedState::Stale(_))).await;
    assert!(
        last_write.elapsed() >= stale_after,
        "stale only after stale_after without a write"
    );
    assert_eq!(s.values, None);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops")
        .unwrap();
}

#[test]
fn a_fifo_or_a_device_in_place_of_a_feed_file_is_invalid_at_once() {
    for name in [PEAKS_FILE, CONTROL_FILE] {
        for kind in ["fifo", "/dev/zero"] {
            let (dir, _w) = silent_feed();
            let mut m = FeedMonitor::new(dir.path(), Duration::from_secs(2));
            assert_eq!(m.poll(t_ms(0)).state, FeedState::Ok);
            let path = dir.path().join(name);
            fs::remove_file(&path).unwrap();
            let what = if kind == "fifo" {
                fifo(&path);
                "it is a FIFO"
            } else {
                std::os::unix::fs::symlink(kind, &path).unwrap();
                "it is a character device"
            };
            let started = Instant::now();
            let s = m.poll(t_ms(10));
            assert!(started.elapsed() < Duration::from_secs(2), "no wait");
            assert!(
                matches!(&s.state, FeedState::Invalid(r) if r.contains(name) && r.contains(what)),
                "{name} as {kind}: {s:?}"
            );
            assert_eq!(s.values, None);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_put_in_place_of_audio_peaks_turns_the_task_invalid_and_shutdown_completes() {
    let (dir, _w) = silent_feed();
    let shutdown = CancellationToken::new();
    let (mut rx, task) = feed::spawn(
        fast_config(dir.path(), Duration::from_secs(2)),
        shutdown.clone(),
    );
    wait_for(&mut rx, "ok", |s| s.state.is_ok()).await;
    let peaks = dir.path().join(PEAKS_FILE);
    fs::remove_file(&peaks).unwrap();
    fifo(&peaks);
    let s = wait_for(
        &mut rx,
        "invalid",
        |s| matches!(&s.state, FeedState::Invalid(r) if r.contains("FIFO")),
    )
    .await;
    assert_eq!(s.values, None);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the reader stops on shutdown within 5 s")
        .unwrap();
}

#[test]
fn a_reading_older_than_stale_after_is_not_usable_whatever_its_state() {
    let (dir, _w) = silent_feed();
    let s = FeedMonitor::new(dir.path(), Duration::from_secs(2)).poll(t_ms(0));
    assert_eq!(s.valid_until, Some(t_ms(2000)));
    assert_eq!(s.usable_at(t_ms(2000)), Ok(&zeros()));
    let why = s.usable_at(t_ms(2001)).expect_err("too old");
    assert!(why.starts_with("out of date"), "{why}");
    // A state that is not ok says so, whatever the time.
    let stale = FeedStatus {
        state: FeedState::Stale("x".into()),
        ..s.clone()
    };
    assert_eq!(stale.usable_at(t_ms(0)), Err("stale (x)".to_string()));
}
