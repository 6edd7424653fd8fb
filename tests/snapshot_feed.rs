//! What the snapshot makes of the feed (issue 10 item 6, issue 15 item 3):
//! silent frames are rows with zeros, and a reading older than
//! `stale_after` is unknown whatever the reader last said. The feed status
//! comes from the real reader over real files written by the simulated
//! audmon.

use std::path::Path;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use stringdriverd::board::{BoardStatus, LinkState};
use stringdriverd::feed::FeedMonitor;
use stringdriverd::sim::feed::FeedWriter;
use stringdriverd::snapshot::{build, Inputs, Settings, Unknown};

const CONFIG: &str = "host = \"t\"\n[[boards]]\nname = \"c\"\nport = \"/dev/x\"\nint_bytes = 2\n\
                      firmware = \"v2\"\nsteppers = 5\n[layout]\nstrings = 2\nx_index = 0\n\
                      z_first_index = 1\n";

#[test]
fn silent_frames_make_rows_with_zeros_and_an_old_reading_makes_none() {
    let cfg = stringdriverd::config::parse(CONFIG, Path::new("t.toml")).expect("config");
    let mut board = BoardStatus::new("c", 5);
    board.link = LinkState::Connected;
    board.positions = Some(vec![0, 10, 20, 30, 40]);
    board.trusted = vec![true; 5];
    let boards = [board];
    let settings = Settings {
        operations: cfg.operations.clone(),
        thresholds: cfg.thresholds.clone(),
        enabled: stringdriverd::daemon::initial_enables(&cfg),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut w = FeedWriter::create(dir.path(), 2, 8).expect("feed");
    w.write_frame(&[vec![(0.0, 0.0); 8], vec![(0.0, 0.0); 8]])
        .expect("silence");
    let read_at = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
    let feed = FeedMonitor::new(dir.path(), Duration::from_secs(2)).poll(read_at);
    let inputs = |at| Inputs {
        host: "t",
        at,
        layout: &cfg.layout,
        boards: &boards,
        settings: &settings,
        feed: &feed,
        controls_id: None,
    };

    let row = build(&inputs(read_at + chrono::Duration::seconds(2))).expect("a row");
    assert_eq!(row.voice_count, vec![0, 0]);
    assert_eq!(row.amp_sum, vec![0.0, 0.0]);

    let late = build(&inputs(read_at + chrono::Duration::milliseconds(2001)))
        .expect_err("too old to be current");
    assert!(
        matches!(&late, Unknown::Feed(why) if why.contains("out of date")),
        "{late:?}"
    );
}
