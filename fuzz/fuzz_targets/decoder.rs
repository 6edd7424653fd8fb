//! Any bytes, in any pieces, through the CmdMessenger decoder at both int
//! widths: it must never panic, never fail on content, never hold more than
//! its frame cap, and must hand out each reply's arguments un-escaped.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stringdriverd::protocol::frame::DEFAULT_MAX_FRAME;
use stringdriverd::protocol::{CmdCodec, Inbound, IntWidth};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the piece size, so arrival patterns are fuzzed too.
    let Some((&first, rest)) = data.split_first() else { return };
    let piece = usize::from(first % 32) + 1;
    for width in [IntWidth::Two, IntWidth::Four] {
        let mut codec = CmdCodec::new(width);
        let mut buf = BytesMut::new();
        for chunk in rest.chunks(piece) {
            buf.extend_from_slice(chunk);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(Inbound::Message(r))) => {
                        let _ = r.ints(width);
                    }
                    Ok(Some(Inbound::Discarded { len, excerpt, .. })) => {
                        assert!(excerpt.len() <= len);
                    }
                    Ok(None) => break,
                    Err(e) => panic!("decoder failed on content: {e}"),
                }
            }
            assert!(buf.len() <= DEFAULT_MAX_FRAME + 1);
        }
        while let Ok(Some(_)) = codec.decode_eof(&mut buf) {}
    }
});
