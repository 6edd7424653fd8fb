//! Opening the serial device, and the retry schedule when it is not there.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;

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
