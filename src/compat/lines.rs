//! Newline-terminated lines from a client, read through one fixed buffer.
//!
//! Nothing is read from the socket while a complete line is waiting in the
//! buffer: the caller takes one line, acts on it (a move may wait in the
//! motion gate for seconds) and only then asks for the next. A client that
//! writes faster than the gate lets moves through therefore fills first this
//! buffer ([`BUFFER`] bytes), then the kernel's socket buffer, and then its
//! own writes block: memory per connection is bounded whatever the client
//! sends.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest line accepted, in bytes without its newline. The longest
/// request, `abs_move <i> <p>` with 32-bit numbers, is about 35 bytes.
pub const MAX_LINE: usize = 256;
/// The read buffer of one connection, in bytes.
pub const BUFFER: usize = 4096;

/// What the next read brought.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A complete line, without its newline.
    Line(Vec<u8>),
    /// A line longer than [`MAX_LINE`]: its start (the first 40 bytes) is
    /// given for the log; the rest of it, up to its newline, is skipped.
    TooLong(Vec<u8>),
    /// The client closed its side; `Some` holds bytes after the last
    /// newline (an unfinished line, never acted on).
    End(Option<Vec<u8>>),
}

/// Lines from `R`, one at a time.
pub struct Lines<R> {
    inner: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Inside a line that was too long: skip up to its newline.
    skipping: bool,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    /// Lines from `inner`.
    pub fn new(inner: R) -> Lines<R> {
        Lines {
            inner,
            buf: vec![0; BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            skipping: false,
        }
    }

    /// The next line; reads from the socket only when no complete line is
    /// buffered.
    pub async fn next(&mut self) -> std::io::Result<Next> {
        loop {
            if let Some(nl) = self.buf[self.start..self.end]
                .iter()
                .position(|&b| b == b'\n')
            {
                let line = self.start..self.start + nl;
                self.start += nl + 1;
                if self.skipping {
                    self.skipping = false;
                    continue;
                }
                if line.len() > MAX_LINE {
                    return Ok(Next::TooLong(self.buf[line][..40].to_vec()));
                }
                return Ok(Next::Line(self.buf[line].to_vec()));
            }
            // No newline buffered.
            if self.skipping {
                self.start = 0;
                self.end = 0;
            } else if self.end - self.start > MAX_LINE {
                let head = self.buf[self.start..self.start + 40].to_vec();
                self.skipping = true;
                self.start = 0;
                self.end = 0;
                return Ok(Next::TooLong(head));
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            // Room is left: at most MAX_LINE + 1 bytes are kept without a newline.
            let n = self.inner.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                let rest = (!self.skipping && self.end > self.start)
                    .then(|| self.buf[self.start..self.end].to_vec());
                self.start = 0;
                self.end = 0;
                self.skipping = false;
                return Ok(Next::End(rest));
            }
            self.end += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn all(input: &[u8]) -> Vec<Next> {
        let mut lines = Lines::new(input);
        let mut out = Vec::new();
        loop {
            let n = lines.next().await.expect("read");
            let end = matches!(n, Next::End(_));
            out.push(n);
            if end {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn lines_long_lines_and_the_unfinished_end() {
        let long = format!("rel_move 1 {}\n", "9".repeat(MAX_LINE * 20));
        let input = format!("rel_move 1 2\n\nget_positions\n{long}reset 0 3\nabs_mo");
        let got = all(input.as_bytes()).await;
        assert_eq!(
            got,
            vec![
                Next::Line(b"rel_move 1 2".to_vec()),
                Next::Line(Vec::new()),
                Next::Line(b"get_positions".to_vec()),
                Next::TooLong(long.as_bytes()[..40].to_vec()),
                Next::Line(b"reset 0 3".to_vec()),
                Next::End(Some(b"abs_mo".to_vec())),
            ]
        );
        // A line of exactly MAX_LINE bytes is accepted; one more is not.
        let ok = "a".repeat(MAX_LINE);
        let got = all(format!("{ok}\n{ok}b\nx\n").as_bytes()).await;
        assert_eq!(got[0], Next::Line(ok.as_bytes().to_vec()));
        assert!(matches!(got[1], Next::TooLong(_)), "{got:?}");
        assert_eq!(got[2], Next::Line(b"x".to_vec()));
        assert_eq!(got[3], Next::End(None));
        // A long line cut by the end of the stream leaves nothing behind.
        let got = all("z".repeat(MAX_LINE * 3).as_bytes()).await;
        assert!(matches!(got[0], Next::TooLong(_)));
        assert_eq!(got[1], Next::End(None));
    }
}
