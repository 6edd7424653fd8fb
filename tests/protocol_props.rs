//! Properties of the CmdMessenger codec: exact round trips at both widths,
//! arbitrary chunking, and survival of arbitrary bytes.

use bytes::BytesMut;
use proptest::prelude::*;
use stringdriverd::protocol::frame::decode_all;
use stringdriverd::protocol::{CmdCodec, Inbound, IntWidth, Reply, Request};
use tokio_util::codec::Decoder;

fn encode(width: IntWidth, id: u16, args: &[i32]) -> Vec<u8> {
    CmdCodec::encode_request(
        width,
        &Request {
            id,
            args: args.to_vec(),
        },
    )
    .expect("encodes")
    .to_vec()
}

fn messages(items: Vec<Inbound>) -> Vec<Reply> {
    items
        .into_iter()
        .filter_map(|i| match i {
            Inbound::Message(r) => Some(r),
            Inbound::Discarded { .. } => None,
        })
        .collect()
}

#[test]
fn every_i16_round_trips_at_two_bytes() {
    for v in i16::MIN..=i16::MAX {
        let v = v as i32;
        let bytes = encode(IntWidth::Two, 3, &[v, -v.clamp(-32767, 32767)]);
        let got = messages(decode_all(IntWidth::Two, &bytes));
        assert_eq!(got.len(), 1, "value {v}: {bytes:?}");
        assert_eq!(got[0].id, 3);
        assert_eq!(
            got[0].ints(IntWidth::Two),
            Some(vec![v, -v.clamp(-32767, 32767)]),
            "value {v}"
        );
    }
}

/// Bytes that need escaping, over-represented so every position sees them.
fn special_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(0x00u8),
        Just(0x2C),
        Just(0x2F),
        Just(0x3B),
        any::<u8>()
    ]
}

fn dense_i32() -> impl Strategy<Value = i32> {
    prop_oneof![
        prop::array::uniform4(special_byte()).prop_map(i32::from_le_bytes),
        any::<i32>(),
        Just(i32::MIN),
        Just(i32::MAX),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn i32_round_trips_at_four_bytes(a in dense_i32(), b in dense_i32()) {
        let bytes = encode(IntWidth::Four, 6, &[a, b]);
        let got = messages(decode_all(IntWidth::Four, &bytes));
        prop_assert_eq!(got.len(), 1);
        prop_assert_eq!(got[0].ints(IntWidth::Four), Some(vec![a, b]));
    }

    #[test]
    fn out_of_width_values_are_refused_not_truncated(v in any::<i32>()) {
        let r = CmdCodec::encode_request(IntWidth::Two, &Request { id: 3, args: vec![0, v] });
        prop_assert_eq!(r.is_ok(), IntWidth::Two.fits(v));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_stream_in_arbitrary_pieces_with_crlf_between_decodes_exactly(
        msgs in prop::collection::vec((0u16..=12, prop::collection::vec(special_byte().prop_map(|b| i16::from_le_bytes([b, b ^ 0x2C]) as i32), 0..3)), 1..20),
        crlf in prop::collection::vec(any::<bool>(), 20),
        cuts in prop::collection::vec(1usize..9, 1..200),
    ) {
        let mut stream = Vec::new();
        for (i, (id, args)) in msgs.iter().enumerate() {
            if crlf[i % crlf.len()] {
                stream.extend_from_slice(b"\r\n");
            }
            stream.extend(encode(IntWidth::Two, *id, args));
        }
        let mut codec = CmdCodec::new(IntWidth::Two);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut rest = &stream[..];
        let mut k = 0;
        while !rest.is_empty() {
            let n = cuts[k % cuts.len()].min(rest.len());
            k += 1;
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            while let Some(item) = codec.decode(&mut buf).expect("never fails on content") {
                got.push(item);
            }
        }
        let got = messages(got);
        prop_assert_eq!(got.len(), msgs.len());
        for (r, (id, args)) in got.iter().zip(&msgs) {
            prop_assert_eq!(r.id, *id);
            prop_assert_eq!(r.ints(IntWidth::Two), Some(args.clone()));
        }
    }

    #[test]
    fn any_bytes_decode_without_panic_and_two_clears_resynchronise(
        garbage in prop::collection::vec(any::<u8>(), 0..3000),
        value in any::<i16>(),
    ) {
        let mut codec = CmdCodec::new(IntWidth::Two);
        let mut buf = BytesMut::from(&garbage[..]);
        while let Some(_item) = codec.decode(&mut buf).expect("never fails on content") {}
        prop_assert!(buf.len() <= stringdriverd::protocol::frame::DEFAULT_MAX_FRAME);
        // Whatever came before, `;;` then a reply yields that reply last
        // (one `;` may be eaten by a trailing escape byte).
        buf.extend_from_slice(b";;");
        buf.extend(encode(IntWidth::Two, 1, &[value as i32]));
        let mut last = None;
        while let Some(item) = codec.decode(&mut buf).expect("never fails on content") {
            last = Some(item);
        }
        match last {
            Some(Inbound::Message(r)) => {
                prop_assert_eq!(r.id, 1);
                prop_assert_eq!(r.ints(IntWidth::Two), Some(vec![value as i32]));
            }
            other => prop_assert!(false, "last item {:?}", other),
        }
        let eof = codec.decode_eof(&mut buf).expect("eof");
        prop_assert!(eof.is_none());
    }
}
