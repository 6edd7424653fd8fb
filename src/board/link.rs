//! Opening the serial device, and the retry schedule when it is not there.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream to a board.
pub trait Link: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Link for T {}

/// Boxed future returned by [`Connector::open`].
pub type OpenFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Box<dyn Link>>> + Send + 'a>>;

/// Opens the link to a board. The real one opens a serial device; tests can
/// hand out in-memory duplex streams.
pub trait Connector: Send + Sync + 'static {
    /// Opens the link. Each call to a real serial port resets an AVR board.
    fn open(&self) -> OpenFuture<'_>;
    /// What is opened, for logs.
    fn describe(&self) -> String;
}

/// Opens a serial device at 8N1 without flow control.
#[derive(Debug, Clone)]
pub struct SerialConnector {
    /// Device path (ideally `/dev/serial/by-id/...`, or a simulator's link).
    pub path: PathBuf,
    /// Baud rate.
    pub baud: u32,
}

impl Connector for SerialConnector {
    fn open(&self) -> OpenFuture<'_> {
        Box::pin(async move {
            let path = self.path.to_string_lossy().into_owned();
            let builder = tokio_serial::new(path, self.baud)
                .data_bits(tokio_serial::DataBits::Eight)
                .parity(tokio_serial::Parity::None)
                .stop_bits(tokio_serial::StopBits::One)
                .flow_control(tokio_serial::FlowControl::None);
            // Opening can block briefly in the kernel (USB); keep it off the workers.
            let port =
                tokio::task::spawn_blocking(move || tokio_serial::SerialStream::open(&builder))
                    .await
                    .map_err(io::Error::other)?
                    .map_err(serial_to_io)?;
            Ok(Box::new(port) as Box<dyn Link>)
        })
    }

    fn describe(&self) -> String {
        format!("{} at {} baud", self.path.display(), self.baud)
    }
}

fn serial_to_io(e: tokio_serial::Error) -> io::Error {
    let kind = match e.kind() {
        tokio_serial::ErrorKind::NoDevice => io::ErrorKind::NotFound,
        tokio_serial::ErrorKind::Io(k) => k,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e.description)
}

/// Capped exponential backoff with jitter, so that many hosts whose boards
/// come back together do not retry in lock step.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    seed: u64,
}

impl Backoff {
    /// Starts at `initial`, doubles up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15)
            | 1;
        Backoff {
            initial,
            max: max.max(initial),
            current: initial,
            seed,
        }
    }

    /// The next delay: the current step with up to ±10 % jitter, never above the cap.
    pub fn next_delay(&mut self) -> Duration {
        // xorshift64: jitter needs no cryptographic quality.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let frac = (self.seed % 2001) as f64 / 1000.0 - 1.0; // -1.0 ..= 1.0
        let delay = self.current.mul_f64(1.0 + 0.1 * frac).min(self.max);
        self.current = (self.current * 2).min(self.max);
        delay
    }

    /// Back to the initial step (after a successful connection).
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        let nominal = [100u64, 200, 400, 800, 1600, 2000, 2000, 2000];
        for (d, n) in delays.iter().zip(nominal) {
            let n = Duration::from_millis(n);
            assert!(
                *d >= n.mul_f64(0.9) && *d <= n.mul_f64(1.1).min(Duration::from_secs(2)),
                "{d:?} vs {n:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(110));
    }
}
