//! Decoder throughput, side by side with the cheapest possible pass over the
//! same bytes (counting `;` terminators), which bounds what any decoder can do.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use stringdriverd::protocol::{CmdCodec, Inbound, IntWidth, Request};
use tokio_util::codec::Decoder;

/// `n` positions replies for `steppers` counters at `width`, with varied values
/// (a share of them need escaping) and a little CR/LF noise between replies.
fn stream(width: IntWidth, steppers: usize, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for k in 0..n {
        let args: Vec<i32> = (0..steppers)
            .map(|i| {
                ((k * 31 + i * 7) % 200) as i32 - 100
                    + if width == IntWidth::Four { 0x3B00 } else { 0 }
            })
            .collect();
        let bytes = CmdCodec::encode_request(width, &Request { id: 1, args }).map(|b| b.to_vec());
        // Requests and replies share the framing; long 4-byte replies exceed the
        // request cap, so build those by hand.
        match bytes {
            Ok(b) => out.extend_from_slice(&b),
            Err(_) => {
                out.extend_from_slice(b"1");
                for i in 0..steppers {
                    out.push(b',');
                    for b in ((k + i) as i32).to_le_bytes().iter().take(width.bytes()) {
                        if matches!(b, b',' | b';' | b'/' | 0) {
                            out.push(b'/');
                        }
                        out.push(*b);
                    }
                }
                out.push(b';');
            }
        }
        if k % 10 == 0 {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for (label, width, steppers) in [
        ("v2_13x2", IntWidth::Two, 13),
        ("tuner_6x4", IntWidth::Four, 6),
    ] {
        let data = stream(width, steppers, 1000);
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_with_input(BenchmarkId::new("cmd_codec", label), &data, |b, data| {
            b.iter(|| {
                let mut codec = CmdCodec::new(width);
                // Arrives in 16-byte pieces, as USB serial delivers it.
                let mut buf = BytesMut::new();
                let mut n = 0;
                for chunk in data.chunks(16) {
                    buf.extend_from_slice(chunk);
                    while let Ok(Some(item)) = codec.decode(&mut buf) {
                        if matches!(item, Inbound::Message(_)) {
                            n += 1;
                        }
                    }
                }
                assert_eq!(n, 1000);
                n
            })
        });
        g.bench_with_input(
            BenchmarkId::new("baseline_count_terminators", label),
            &data,
            |b, data| {
                b.iter(|| {
                    std::hint::black_box(data)
                        .iter()
                        .filter(|&&b| b == b';')
                        .count()
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
