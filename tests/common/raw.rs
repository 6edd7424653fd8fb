//! Raw bytes to a simulator's pseudo-terminal, without a driver: for tests
//! that send what a host should not (or what an old host did) and look at
//! what the firmware model made of it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use stringdriverd::protocol::frame::decode_all;
use stringdriverd::protocol::{CmdCodec, Firmware, Inbound, IntWidth, Request};
use stringdriverd::sim::{SimHandle, TraceEntry, TraceEvent};

const WAIT: Duration = Duration::from_secs(10);

fn readies(t: &[TraceEntry]) -> usize {
    t.iter().filter(|e| e.event == TraceEvent::Ready).count()
}

/// Opens the simulated port (which resets the board) and waits until the
/// reset window is over.
pub fn open_ready(sim: &SimHandle) -> File {
    let before = readies(&sim.trace());
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(sim.link())
        .expect("open the pty");
    assert!(sim.wait_for_trace(WAIT, |t| readies(t) > before));
    f
}

/// Writes `bytes`, then a check_memory request (`12;`, the same number on
/// every firmware) as a sentinel, and returns the replies that came before
/// the sentinel's as (command number, ints of `width`). The board answers
/// in order, so whatever `bytes` caused has been answered by then.
pub fn replies_before_sentinel(
    f: &mut File,
    bytes: &[u8],
    width: IntWidth,
) -> Vec<(u16, Vec<i32>)> {
    f.write_all(bytes).expect("write");
    f.write_all(b"12;").expect("write");
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        assert!(Instant::now() < deadline, "no sentinel reply; got {got:?}");
        match f.read(&mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
        let items = decode_all(width, &got);
        if let Some(end) = items
            .iter()
            .position(|i| matches!(i, Inbound::Message(r) if r.id == 12))
        {
            return items[..end]
                .iter()
                .filter_map(|i| match i {
                    Inbound::Message(r) => r.ints(width).map(|v| (r.id, v)),
                    _ => None,
                })
                .collect();
        }
    }
}

/// The counters of the last positions reply among `replies`.
pub fn last_positions(fw: Firmware, replies: &[(u16, Vec<i32>)]) -> Vec<i32> {
    let id = fw.id(stringdriverd::protocol::Op::Positions);
    replies
        .iter()
        .rev()
        .find(|(r, _)| Some(*r) == id)
        .map(|(_, p)| p.clone())
        .unwrap_or_else(|| panic!("no positions reply in {replies:?}"))
}

/// `id` with `args` at `width` each (v2 / tuner layout, or a v1 request
/// sent the old, wrong way).
pub fn uniform(width: IntWidth, id: u16, args: &[i32]) -> Vec<u8> {
    let req = Request {
        id,
        args: args.to_vec(),
    };
    CmdCodec::encode_request(width, &req)
        .expect("encodes")
        .to_vec()
}

/// `id` with `args` in `fw`'s argument layout.
pub fn in_layout(fw: Firmware, width: IntWidth, id: u16, args: &[i32]) -> Vec<u8> {
    let req = Request {
        id,
        args: args.to_vec(),
    };
    CmdCodec::encode_for(fw, width, &req)
        .expect("encodes")
        .to_vec()
}
