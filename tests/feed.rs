//! The audmon feed reader against real files in a temporary directory,
//! written by the simulated audmon or by hand when they must be wrong.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use common::feed::{dead_pid, fast_config, wait_for};
use proptest::prelude::*;
use stringdriverd::feed::{
    self, pid_alive, read_frame, ChangeTracker, FeedError, FeedMonitor, FeedState, CONTROL_FILE,
    PEAKS_FILE,
};
use stringdriverd::sim::feed::{partials_for_distance, FeedWriter};
use tokio_util::sync::CancellationToken;

const LONG: Duration = Duration::from_secs(3600);

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
}

fn invalid(r: Result<feed::Frame, FeedError>) -> String {
    match r {
        Err(FeedError::Invalid(m)) => m,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn peaks_bytes(frame: &[Vec<(f32, f32)>]) -> Vec<u8> {
    let mut out = Vec::new();
    for ch in frame {
        for &(f, a) in ch {
            feed::encode_entry(&mut out, f, a);
        }
    }
    out
}

fn write_control(dir: &Path, text: &str) {
    fs::write(dir.join(CONTROL_FILE), text).unwrap();
}

fn own_pid() -> i32 {
    std::process::id() as i32
}

fn sample() -> Vec<Vec<(f32, f32)>> {
    vec![
        vec![(110.0, 2.0), (220.0, 0.0), (330.0, 0.5), (440.0, 0.25)],
        vec![(0.0, 0.0); 4],
        vec![(98.0, 1.0), (196.0, 1.0), (294.0, 1.0), (392.0, 1.0)],
    ]
}

#[test]
fn absent_without_files_and_with_only_one_of_them() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        matches!(read_frame(dir.path()), Err(FeedError::Absent(p)) if p.ends_with(CONTROL_FILE))
    );
    let mut m = FeedMonitor::new(dir.path(), LONG);
    let s = m.poll(t(0));
    assert!(
        matches!(&s.state, FeedState::Absent(r) if r.contains(CONTROL_FILE)),
        "{s:?}"
    );
    assert_eq!((s.values, s.pid, s.channels), (None, None, 0));
    assert_eq!(s.read_at, Some(t(0)));

    write_control(dir.path(), &format!("{}\n3\n4\n", own_pid()));
    assert!(matches!(read_frame(dir.path()), Err(FeedError::Absent(p)) if p.ends_with(PEAKS_FILE)));
    let s = m.poll(t(1));
    assert!(
        matches!(&s.state, FeedState::Absent(r) if r.contains(PEAKS_FILE)),
        "{s:?}"
    );
    assert_eq!(s.values, None);

    fs::remove_file(dir.path().join(CONTROL_FILE)).unwrap();
    fs::write(dir.path().join(PEAKS_FILE), peaks_bytes(&sample())).unwrap();
    let s = m.poll(t(2));
    assert!(
        matches!(&s.state, FeedState::Absent(r) if r.contains(CONTROL_FILE)),
        "{s:?}"
    );
}

#[test]
fn an_ok_frame_gives_voice_count_and_amp_sum_per_channel() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = FeedWriter::create(dir.path(), 3, 4).unwrap();
    w.write_frame(&sample()).unwrap();
    let f = read_frame(dir.path()).unwrap();
    assert_eq!(f.control.pid, own_pid());
    assert_eq!(f.voice_count, vec![3, 0, 4]);
    assert_eq!(f.amp_sum, vec![2.75, 0.0, 4.0]);
    assert_eq!(f.entries, sample());

    let s = FeedMonitor::new(dir.path(), LONG).poll(t(0));
    assert_eq!(s.state, FeedState::Ok);
    assert_eq!(s.state.to_string(), "ok");
    assert_eq!(s.channels, 3);
    assert_eq!(s.pid, Some(own_pid()));
    assert_eq!(s.frame_changed_at, Some(t(0)));
    let v = s.values.unwrap();
    assert_eq!(v.voice_count, vec![3, 0, 4]);
    assert_eq!(v.amp_sum, vec![2.75, 0.0, 4.0]);
}

#[test]
fn a_truncated_peaks_file_is_invalid_and_names_the_sizes() {
    let dir = tempfile::tempdir().unwrap();
    write_control(dir.path(), &format!("{}\n2\n4\n", own_pid()));
    fs::write(dir.path().join(PEAKS_FILE), vec![0u8; 40]).unwrap();
    let m = invalid(read_frame(dir.path()));
    assert!(m.contains("holds 40 bytes"), "{m}");
    assert!(m.contains("2 channels x 4 partials x 8 = 64 bytes"), "{m}");
    let s = FeedMonitor::new(dir.path(), LONG).poll(t(0));
    assert!(
        matches!(&s.state, FeedState::Invalid(r) if r.contains("64 bytes")),
        "{s:?}"
    );
    assert_eq!(s.values, None);
    assert_eq!(s.channels, 2);
}

#[test]
fn a_peaks_file_larger_than_needed_is_fine() {
    let dir = tempfile::tempdir().unwrap();
    write_control(dir.path(), &format!("{}\n3\n4\n", own_pid()));
    let mut bytes = peaks_bytes(&sample());
    // The tail would be invalid if it were read (NaN amplitudes).
    for _ in 0..1000 {
        feed::encode_entry(&mut bytes, f32::NAN, f32::NAN);
    }
    fs::write(dir.path().join(PEAKS_FILE), &bytes).unwrap();
    let f = read_frame(dir.path()).unwrap();
    assert_eq!(f.voice_count, vec![3, 0, 4]);
}

#[test]
fn nan_infinity_and_negative_amplitudes_are_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = FeedWriter::create(dir.path(), 3, 4).unwrap();
    for (bad, needle) in [
        ((330.0, f32::NAN), "amplitude is NaN"),
        ((330.0, f32::INFINITY), "amplitude is inf"),
        ((330.0, -1.0), "amplitude is -1"),
        ((f32::NAN, 1.0), "frequency is NaN"),
    ] {
        let mut frame = sample();
        frame[2][1] = bad;
        w.write_frame(&frame).unwrap();
        let m = invalid(read_frame(dir.path()));
        assert!(m.contains("channel 2 entry 1") && m.contains(needle), "{m}");
        let s = FeedMonitor::new(dir.path(), LONG).poll(t(0));
        assert!(matches!(s.state, FeedState::Invalid(_)), "{s:?}");
        assert_eq!(s.values, None);
    }
}

#[test]
fn a_resized_feed_is_read_with_the_new_sizes_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = FeedMonitor::new(dir.path(), LONG);
    let mut w = FeedWriter::create(dir.path(), 2, 4).unwrap();
    w.write_frame(&[vec![(1.0, 1.0)], vec![]]).unwrap();
    let s = m.poll(t(0));
    assert_eq!((s.state, s.channels), (FeedState::Ok, 2));

    // audmon restarted with more channels and partials.
    let mut w = FeedWriter::create(dir.path(), 4, 12).unwrap();
    w.write_frame(&vec![partials_for_distance(0.0, 12, 1); 4])
        .unwrap();
    let s = m.poll(t(1));
    assert_eq!(s.state, FeedState::Ok);
    assert_eq!(s.values.unwrap().voice_count, vec![12; 4]);
    assert_eq!(s.frame_changed_at, Some(t(1)));

    // Control grown, peaks not yet: never read past the end.
    write_control(dir.path(), &format!("{}\n8\n12\n", own_pid()));
    let msg = invalid(read_frame(dir.path()));
    assert!(
        msg.contains("holds 384 bytes") && msg.contains("= 768 bytes"),
        "{msg}"
    );
    let s = m.poll(t(2));
    assert!(matches!(s.state, FeedState::Invalid(_)), "{s:?}");
    assert_eq!(s.channels, 8);

    // Control shrunk, peaks still the large ones: the head is a frame.
    write_control(dir.path(), &format!("{}\n1\n2\n", own_pid()));
    let f = read_frame(dir.path()).unwrap();
    assert_eq!((f.entries.len(), f.entries[0].len()), (1, 2));
    assert_eq!(m.poll(t(3)).state, FeedState::Ok);

    // Beyond what the reader accepts at all.
    write_control(dir.path(), &format!("{}\n65\n12\n", own_pid()));
    assert!(invalid(read_frame(dir.path())).contains("outside 1 to 64"));
    write_control(dir.path(), &format!("{}\n4\n100000\n", own_pid()));
    assert!(invalid(read_frame(dir.path())).contains("outside 1 to 256"));
}

#[test]
fn control_garbage_is_invalid_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(PEAKS_FILE), vec![0u8; 4096]).unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"".to_vec(),
            "expected 3 lines (pid, channels, partials), found 0",
        ),
        (b"hello\n".to_vec(), "found 1"),
        (
            b"4182\nfour\n12\n".to_vec(),
            "line 2 (channels) is \"four\", not a whole number",
        ),
        (b"4182\n4\n12\nextra\n".to_vec(), "found 4"),
        (b"-1\n4\n12\n".to_vec(), "line 1 (pid)"),
        (b"\xff\xfe\x00\x01".to_vec(), "not UTF-8"),
        (vec![b'7'; 1 << 20], "longer than 256 bytes"),
    ];
    for (content, needle) in cases {
        fs::write(dir.path().join(CONTROL_FILE), &content).unwrap();
        let m = invalid(read_frame(dir.path()));
        assert!(m.starts_with("audio_control: "), "{m}");
        assert!(m.contains(needle), "{m}");
        let s = FeedMonitor::new(dir.path(), LONG).poll(t(0));
        assert!(
            matches!(&s.state, FeedState::Invalid(r) if r.contains(needle)),
            "{s:?}"
        );
        assert_eq!((s.values, s.pid, s.channels), (None, None, 0));
    }
}

#[test]
fn a_dead_writer_pid_is_stale() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = FeedWriter::create(dir.path(), 3, 4).unwrap();
    w.write_frame(&sample()).unwrap();
    let mut m = FeedMonitor::new(dir.path(), LONG);
    assert_eq!(m.poll(t(0)).state, FeedState::Ok);

    let pid = dead_pid();
    assert!(!pid_alive(pid));
    w.set_pid(pid).unwrap();
    let s = m.poll(t(1));
    assert!(
        matches!(&s.state, FeedState::Stale(r) if r.contains(&format!("PID {pid}"))),
        "{s:?}"
    );
    assert_eq!(s.values, None);
    assert_eq!(s.pid, Some(pid));
    // The frame itself is still readable; liveness is the monitor's business.
    assert!(read_frame(dir.path()).is_ok());

    w.set_pid(own_pid()).unwrap();
    assert_eq!(m.poll(t(2)).state, FeedState::Ok);
}

#[test]
fn an_unwritten_frame_becomes_stale_after_stale_after() {
    let dir = tempfile::tempdir().unwrap();
    let stale_after = Duration::from_secs(2);
    let mut w = FeedWriter::create(dir.path(), 3, 4).unwrap();
    w.write_frame(&sample()).unwrap();
    let mut m = FeedMonitor::new(dir.path(), stale_after);
    assert_eq!(m.poll(t(0)).state, FeedState::Ok);
    assert_eq!(
        m.poll(t(2)).state,
        FeedState::Ok,
        "exactly stale_after is not longer"
    );
    let s = m.poll(t(3));
    assert!(
        matches!(&s.state, FeedState::Stale(r) if r.contains("not written since") && r.contains("2s")),
        "{s:?}"
    );
    assert_eq!(s.values, None);
    assert_eq!(s.frame_changed_at, Some(t(0)));

    let mut frame = sample();
    frame[1][0] = (50.0, 1.0);
    w.write_frame(&frame).unwrap();
    let s = m.poll(t(4));
    assert_eq!(s.state, FeedState::Ok);
    assert_eq!(s.frame_changed_at, Some(t(4)));
    assert_eq!(s.values.unwrap().voice_count, vec![3, 1, 4]);

    // The pure clock on its own.
    let mark = feed::peaks_written(dir.path()).unwrap();
    let mut c = ChangeTracker::new();
    c.observe(mark, b"x", t(10));
    c.observe(mark, b"x", t(13));
    assert!(c.is_stale(t(13), stale_after));
    assert_eq!(c.unchanged_for(t(13)), Some(Duration::from_secs(3)));
}

#[tokio::test]
async fn the_task_publishes_ok_then_absent_then_ok_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = FeedWriter::create(dir.path(), 3, 4).unwrap();
    w.write_frame(&sample()).unwrap();
    let shutdown = CancellationToken::new();
    let (mut rx, task) = feed::spawn(
        fast_config(dir.path(), Duration::from_secs(60)),
        shutdown.clone(),
    );

    let s = wait_for(&mut rx, "ok", |s| s.state.is_ok()).await;
    assert_eq!(s.values.unwrap().voice_count, vec![3, 0, 4]);
    assert!(s.read_at.is_some());

    w.remove().unwrap();
    let s = wait_for(&mut rx, "absent", |s| {
        matches!(s.state, FeedState::Absent(_))
    })
    .await;
    assert_eq!((s.values, s.pid), (None, None));

    let mut w = FeedWriter::create(dir.path(), 2, 4).unwrap();
    w.write_frame(&[vec![(1.0, 1.0); 4], vec![]]).unwrap();
    let s = wait_for(&mut rx, "ok again", |s| {
        s.state.is_ok() && s.values.as_ref().is_some_and(|v| v.voice_count == [4, 0])
    })
    .await;
    assert_eq!(s.channels, 2);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("task stops on shutdown")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_reports_a_dead_writer_and_follows_new_frames() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = FeedWriter::create(dir.path(), 1, 12).unwrap();
    let shutdown = CancellationToken::new();
    let (mut rx, task) = feed::spawn(
        fast_config(dir.path(), Duration::from_secs(60)),
        shutdown.clone(),
    );
    for distance in [100.0, 50.0, 0.0] {
        w.write_frame(&[partials_for_distance(distance, 12, 9)])
            .unwrap();
        let want = 12 - (distance / 10.0) as i32;
        wait_for(&mut rx, "the new frame", |s| {
            s.values.as_ref().is_some_and(|v| v.voice_count == [want])
        })
        .await;
    }
    w.set_pid(dead_pid()).unwrap();
    let s = wait_for(&mut rx, "stale", |s| matches!(s.state, FeedState::Stale(_))).await;
    assert_eq!(s.values, None);
    drop(rx);
    // With every receiver gone the task ends by itself.
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("task stops when nobody listens")
        .unwrap();
}

/// A writer rewriting the file as fast as it can, every entry of a frame
/// holding the frame's number: the reader never fails other than with a
/// torn read, and never panics.
#[test]
fn reads_during_constant_rewrites_are_whole_frames_or_torn() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let (channels, partials) = (12, 256);
    let mut w = FeedWriter::create(dir.path(), channels, partials).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 1.0f32;
            while !stop.load(Ordering::Relaxed) {
                w.write_frame(&vec![vec![(n, n); partials]; channels])
                    .unwrap();
                n += 1.0;
            }
        })
    };
    let (mut whole, mut torn, mut mixed) = (0, 0, 0);
    for _ in 0..300 {
        match read_frame(dir.path()) {
            Ok(f) => {
                let first = f.entries[0][0];
                if f.entries.iter().flatten().all(|&e| e == first) {
                    whole += 1;
                } else {
                    mixed += 1;
                }
            }
            Err(FeedError::Invalid(m)) if m.contains("torn read") => torn += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    // Mixed frames are the accepted residual risk (a writer stalled mid-write
    // during both reads); reported, not asserted, since scheduling decides.
    eprintln!("whole {whole}, torn {torn}, mixed {mixed}");
    assert!(whole > 0);
}

#[test]
fn the_model_never_gives_less_when_closer() {
    for seed in [0u64, 1, 42, u64::MAX] {
        for partials in [1usize, 12, 256] {
            let mut previous: Option<(usize, f32)> = None;
            // From far to touching, in small steps.
            for i in (0..=3000).rev() {
                let distance = i as f32 * 0.9;
                let p = partials_for_distance(distance, partials, seed);
                assert_eq!(p.len(), partials);
                let voices = p.iter().filter(|e| e.1 > 0.0).count();
                let sum: f32 = p.iter().map(|e| e.1).sum();
                if let Some((v, s)) = previous {
                    assert!(voices >= v, "seed {seed} distance {distance}");
                    assert!(sum >= s, "seed {seed} distance {distance}");
                }
                previous = Some((voices, sum));
            }
            assert_eq!(previous.map(|p| p.0), Some(partials), "touching sounds all");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn arbitrary_files_never_panic(
        control in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            (1i64..100_000, 0i64..80, 0i64..300, "[ \t\r\n]{0,3}").prop_map(|(p, c, n, ws)| {
                format!("{p}\n{c}{ws}\n{n}\n").into_bytes()
            }),
        ],
        peaks in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CONTROL_FILE), &control).unwrap();
        fs::write(dir.path().join(PEAKS_FILE), &peaks).unwrap();
        if let Ok(f) = read_frame(dir.path()) {
            let need = f.control.channels * f.control.partials * 8;
            prop_assert!(peaks.len() >= need);
            prop_assert_eq!(f.voice_count.len(), f.control.channels);
        }
        let s = FeedMonitor::new(dir.path(), LONG).poll(t(0));
        prop_assert_eq!(s.values.is_some(), s.state.is_ok());
        if let Ok(text) = std::str::from_utf8(&control) {
            if let Ok(ctl) = feed::parse_control(text) {
                let _ = feed::parse_peaks(&peaks, &ctl);
            }
        }
    }

    #[test]
    fn a_valid_frame_round_trips_through_the_writer(
        frame in (1usize..=8, 1usize..=16).prop_flat_map(|(c, p)| {
            proptest::collection::vec(
                proptest::collection::vec(
                    (-1e6f32..1e6, prop_oneof![Just(0.0f32), 0.0f32..1e4]),
                    p,
                ),
                c,
            )
        }),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut w = FeedWriter::create(dir.path(), frame.len(), frame[0].len()).unwrap();
        w.write_frame(&frame).unwrap();
        let f = read_frame(dir.path()).unwrap();
        prop_assert_eq!(&f.entries, &frame);
        for (c, ch) in frame.iter().enumerate() {
            let voices = ch.iter().filter(|e| e.1 > 0.0).count() as i32;
            let sum: f32 = ch.iter().map(|e| e.1).sum();
            prop_assert_eq!(f.voice_count[c], voices);
            prop_assert_eq!(f.amp_sum[c], sum);
        }
        let s = FeedMonitor::new(dir.path(), LONG).poll(t(0));
        prop_assert_eq!(s.state, FeedState::Ok);
        prop_assert_eq!(s.values.map(|v| v.voice_count), Some(f.voice_count));
    }
}
