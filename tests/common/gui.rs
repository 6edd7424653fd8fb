//! A client of the stepper GUI's socket written from `gui-ipc.md` alone, as
//! the lab's tools behave: moves and resets over one long-lived connection,
//! never reading a reply, reconnecting once when a write fails;
//! `get_positions` and `get_x_step` each on a fresh connection that writes
//! the line, reads one line and closes. (The tools use no timeouts; these
//! helpers bound their waits by [`WAIT`] only so that a broken daemon fails
//! the test instead of hanging it.)

use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::machine::WAIT;

/// The long-lived connection moves and resets go over.
pub struct Mover {
    path: PathBuf,
    stream: UnixStream,
}

impl Mover {
    /// Connects to the socket at `path`.
    pub async fn connect(path: &Path) -> Mover {
        Mover {
            path: path.to_path_buf(),
            stream: UnixStream::connect(path).await.expect("connect"),
        }
    }

    /// Writes `line` and a newline; on a failed write reconnects once and
    /// writes again, as the GUI tools do. Reads nothing.
    pub async fn send(&mut self, line: &str) {
        let bytes = format!("{line}\n");
        if self.stream.write_all(bytes.as_bytes()).await.is_err() {
            self.stream = UnixStream::connect(&self.path).await.expect("reconnect");
            self.stream
                .write_all(bytes.as_bytes())
                .await
                .expect("write after reconnecting");
        }
    }

    /// Writes `bytes` as they are (several lines, a long line).
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next line the daemon sent on this connection (the tools never
    /// read here; a test does, after a `get_*`, to show that nothing came
    /// before its answer). `None` when the daemon closed the connection.
    pub async fn read_line(&mut self) -> Option<String> {
        let mut line = Vec::new();
        let read = async {
            loop {
                let mut b = [0u8; 1];
                if self.stream.read(&mut b).await.expect("read") == 0 {
                    return None;
                }
                if b[0] == b'\n' {
                    return Some(String::from_utf8_lossy(&line).into_owned());
                }
                line.push(b[0]);
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .expect("a line in time")
    }

    /// The connection itself (for tests that write without blocking).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}

/// `get_positions` / `get_x_step` as the tools ask: a fresh connection, the
/// line, one line back, close. `None` when the daemon closed the connection
/// without a line (the end of the stream; a reset or a broken pipe when it
/// closed the connection at once, the request unread).
pub async fn query(path: &Path, line: &str) -> Option<String> {
    let closed = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        )
    };
    let mut s = UnixStream::connect(path).await.expect("connect");
    match s.write_all(format!("{line}\n").as_bytes()).await {
        Ok(()) => {}
        Err(e) if closed(&e) => return None,
        Err(e) => panic!("write: {e}"),
    }
    let mut reply = String::new();
    let n = tokio::time::timeout(WAIT, BufReader::new(&mut s).read_line(&mut reply))
        .await
        .expect("a reply (or the end) in time");
    match n {
        Ok(n) => (n > 0).then(|| reply.trim_end_matches('\n').to_string()),
        Err(e) if closed(&e) => None,
        Err(e) => panic!("read: {e}"),
    }
}

/// The counters `get_positions` reports, by index; panics on a malformed
/// reply.
pub async fn positions(path: &Path) -> Vec<i32> {
    let line = query(path, "get_positions")
        .await
        .expect("get_positions answered");
    parse_positions(&line)
}

/// `positions 0=<p0> 1=<p1> ...` parsed, checking the indices run 0, 1, ...
pub fn parse_positions(line: &str) -> Vec<i32> {
    let rest = line
        .strip_prefix("positions ")
        .unwrap_or_else(|| panic!("not a positions line: {line:?}"));
    rest.split(' ')
        .enumerate()
        .map(|(i, field)| {
            let (index, value) = field
                .split_once('=')
                .unwrap_or_else(|| panic!("field {field:?} of {line:?}"));
            assert_eq!(index, i.to_string(), "{line:?}");
            value
                .parse()
                .unwrap_or_else(|_| panic!("value {value:?} of {line:?}"))
        })
        .collect()
}
