//! Poll round trip against the simulator over a real pseudo-terminal, at the
//! firmware's real reply pacing (about 2 ms per stepper), side by side with a
//! bare exchange (write `1;`, read until the reply is decoded) on the same kind
//! of link: the difference is what the driver adds.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use futures::{SinkExt, StreamExt};
use stringdriverd::board::{self, BoardSpec, Connector, LinkState, SerialConnector};
use stringdriverd::protocol::{CmdCodec, Firmware, Inbound, Outbound, Request};
use stringdriverd::sim::{Profile, SimOptions, Simulator};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

fn options(scale: f64) -> SimOptions {
    let mut o = SimOptions::new(Profile::for_firmware(Firmware::V2, None));
    o.reset_window = Duration::from_millis(100);
    o.speed_scale = scale;
    o
}

fn poll(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut g = c.benchmark_group("poll_round_trip_13_steppers");
    g.sample_size(30).measurement_time(Duration::from_secs(6));

    // Baseline: the same request and reply with no driver in between.
    {
        let link = dir.path().join("raw");
        let _sim = Simulator::spawn(options(1.0), &link).expect("sim");
        let connector = SerialConnector {
            path: link.clone(),
            baud: 115_200,
        };
        let mut io = rt.block_on(async {
            let l = connector.open().await.expect("open");
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut io = Framed::new(l, CmdCodec::new(stringdriverd::protocol::IntWidth::Two));
            // Throw the bootloader noise away.
            while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), io.next()).await
            {
            }
            io.send(Outbound::ClearParser).await.expect("send");
            io
        });
        g.bench_function("baseline_bare_exchange", |b| {
            b.iter(|| {
                rt.block_on(async {
                    io.send(Outbound::Command(Request {
                        id: 1,
                        args: vec![],
                    }))
                    .await
                    .expect("send");
                    loop {
                        match io.next().await {
                            Some(Ok(Inbound::Message(r))) if r.id == 1 => break r.args.len(),
                            Some(Ok(_)) => continue,
                            other => panic!("{other:?}"),
                        }
                    }
                })
            })
        });
    }

    // The driver: BoardHandle::poll through the queue, the board task and the status channel.
    {
        let link = dir.path().join("driver");
        let opts = options(1.0);
        let _sim = Simulator::spawn(opts.clone(), &link).expect("sim");
        let p = &opts.profile;
        let speeds = p.group_of.iter().map(|g| p.groups[*g].speed).collect();
        let mut spec = BoardSpec::new("bench", link.clone(), p.firmware, p.width, speeds);
        spec.reset_wait = Duration::from_millis(150);
        spec.poll_interval = Duration::from_secs(3600); // only the benchmark's polls
        let shutdown = CancellationToken::new();
        let connector = Arc::new(SerialConnector {
            path: link,
            baud: 115_200,
        });
        let handle = rt.block_on(async {
            let (h, _task) = board::spawn(spec, connector, None, shutdown.clone());
            h.wait_for(Duration::from_secs(10), |s| s.link == LinkState::Connected)
                .await
                .expect("connected");
            h
        });
        g.bench_function("driver_poll", |b| {
            b.iter(|| rt.block_on(handle.poll()).expect("poll").len())
        });
        shutdown.cancel();
    }
    g.finish();
}

criterion_group!(benches, poll);
criterion_main!(benches);
