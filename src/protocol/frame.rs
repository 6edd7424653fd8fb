//! CmdMessenger framing: bytes to messages and back.
//!
//! A message is the command number in ASCII decimal, then for every argument a
//! `,` and the argument, then `;`. Arguments here are binary little-endian
//! integers; inside them each `,` `;` `/` and NUL byte is preceded by the escape
//! character `/`. The decoder therefore scans for the first *unescaped* `;`,
//! splits on unescaped `,` and drops each escape character.
//!
//! The line from a board is not clean: bootloader noise after a reset, stray
//! CR/LF, half messages. The decoder never fails the stream because of content:
//! anything it cannot use comes out as [`Inbound::Discarded`] (with a capped
//! excerpt for the log) and decoding continues with the next byte. Noise without
//! a terminator that sticks to the front of a real reply is peeled off: the
//! command number is the trailing run of digits of the first field, exactly as
//! the firmware's own `atoi` would misread it, so `junk1,...;` still yields the
//! reply to command 1 (and the junk is reported as discarded).

use bytes::{BufMut, Bytes, BytesMut};
use std::collections::VecDeque;
use tokio_util::codec::{Decoder, Encoder};

use super::commands::{Firmware, IntWidth};

/// Field separator.
pub const FIELD_SEP: u8 = b',';
/// Command separator (end of message).
pub const CMD_SEP: u8 = b';';
/// Escape character.
pub const ESCAPE: u8 = b'/';
/// The most bytes a message may take, its `;` included: CmdMessenger's
/// 64-byte command buffer restarts when it holds 63 bytes, so at most 62
/// bytes before the `;` are ever executed (measured on the real v2 firmware;
/// the bytes after such an overflow are parsed as a new message).
pub const BOARD_RX_BUFFER: usize = 63;
/// How much of a discarded run is kept for the log.
pub const EXCERPT_LEN: usize = 48;
/// Default cap on an unterminated run before it is dropped as noise. The
/// longest reply in service (19 steppers at 4 bytes, all escaped) is under 200 bytes.
pub const DEFAULT_MAX_FRAME: usize = 1024;

/// Whether `b` must be escaped inside an argument.
pub fn needs_escape(b: u8) -> bool {
    matches!(b, FIELD_SEP | CMD_SEP | ESCAPE | 0)
}

/// A command to a board: its number and its binary integer arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Command number in the board's firmware table.
    pub id: u16,
    /// Arguments, each sent at the width the firmware's layout gives it
    /// ([`Firmware::layout`]; the board's int width without a firmware).
    pub args: Vec<i32>,
}

/// What the host writes to a board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// A complete command message.
    Command(Request),
    /// A lone `;`, which terminates (and so discards) whatever half message
    /// sits in the board's parser.
    ClearParser,
}

/// A complete message received from a board, arguments un-escaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Command number the board put first.
    pub id: u16,
    /// Raw argument bytes, escapes removed.
    pub args: Vec<Bytes>,
}

impl Reply {
    /// Reads every argument as an int of `width`; `None` if any has another length.
    pub fn ints(&self, width: IntWidth) -> Option<Vec<i32>> {
        self.args.iter().map(|a| width.from_le(a)).collect()
    }
}

/// One item produced by the decoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A well-formed message.
    Message(Reply),
    /// Bytes that could not be part of any message.
    Discarded {
        /// Why they were dropped.
        reason: DiscardReason,
        /// How many bytes were dropped.
        len: usize,
        /// The first [`EXCERPT_LEN`] of them, for the log.
        excerpt: Bytes,
    },
}

/// Why the decoder dropped bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscardReason {
    /// Junk in front of a message's command number.
    LeadingNoise,
    /// A terminated message whose first field holds no command number.
    NoCommandNumber,
    /// A command number too large for any firmware.
    BadCommandNumber,
    /// More than the frame cap arrived without a terminator.
    Overlong,
}

impl std::fmt::Display for DiscardReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DiscardReason::LeadingNoise => "noise before a message",
            DiscardReason::NoCommandNumber => "message without a command number",
            DiscardReason::BadCommandNumber => "command number out of range",
            DiscardReason::Overlong => "unterminated run over the frame cap",
        })
    }
}

/// Errors of the codec itself (content problems are never errors, see module doc).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// An argument does not fit the width the firmware reads it at.
    #[error("argument {value} does not fit a {width}-byte int")]
    ArgumentOutOfRange {
        /// The offending value.
        value: i32,
        /// The width of that argument.
        width: IntWidth,
    },
    /// The encoded message would overflow the board's receive buffer and be dropped whole.
    #[error("message of {len} bytes exceeds the board's {BOARD_RX_BUFFER}-byte buffer")]
    TooLong {
        /// Encoded length.
        len: usize,
    },
    /// The underlying link failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Encoder and decoder for one board's link.
///
/// ```
/// use bytes::BytesMut;
/// use stringdriverd::protocol::{CmdCodec, Inbound, IntWidth, Request};
/// use tokio_util::codec::Decoder;
///
/// // set_stepper(2, 59) on a v2 board: `6,` then 2 and 59 as escaped 2-byte ints.
/// let bytes = CmdCodec::encode_request(IntWidth::Two, &Request { id: 6, args: vec![2, 59] })?;
/// assert_eq!(&bytes[..], b"6,\x02/\x00,/;/\x00;");
///
/// // Replies may arrive in pieces and after noise.
/// let mut codec = CmdCodec::new(IntWidth::Two);
/// let mut buf = BytesMut::from(&b"\r\n1,\x05"[..]);
/// assert_eq!(codec.decode(&mut buf)?, None);
/// buf.extend_from_slice(b"/\x00;");
/// let Some(Inbound::Message(reply)) = codec.decode(&mut buf)? else { panic!() };
/// assert_eq!(reply.ints(IntWidth::Two), Some(vec![5]));
/// # Ok::<(), stringdriverd::protocol::FrameError>(())
/// ```
#[derive(Debug)]
pub struct CmdCodec {
    width: IntWidth,
    /// The firmware whose argument layout requests are written in; `None`:
    /// every argument at `width`.
    firmware: Option<Firmware>,
    max_frame: usize,
    /// Bytes of the buffer already scanned for a terminator.
    scanned: usize,
    /// Whether the last scanned byte was an unconsumed escape character.
    escaped: bool,
    /// Items decoded from one frame but not yet handed out.
    pending: VecDeque<Inbound>,
}

impl CmdCodec {
    /// A codec for a board whose `int` is `width` wide, writing every
    /// argument at that width (right for v2 and tuner boards only; a board
    /// driver uses [`CmdCodec::for_board`]).
    pub fn new(width: IntWidth) -> Self {
        Self::with_max_frame(width, DEFAULT_MAX_FRAME)
    }

    /// A codec for a board running `firmware` with an `int` of `width`:
    /// requests are written in the firmware's argument layout (v1: 4-byte
    /// values), replies read at `width`.
    pub fn for_board(firmware: Firmware, width: IntWidth) -> Self {
        let mut c = Self::new(width);
        c.firmware = Some(firmware);
        c
    }

    /// Same as [`CmdCodec::new`], with a custom cap on unterminated runs.
    pub fn with_max_frame(width: IntWidth, max_frame: usize) -> Self {
        CmdCodec {
            width,
            firmware: None,
            max_frame: max_frame.max(8),
            scanned: 0,
            escaped: false,
            pending: VecDeque::new(),
        }
    }

    /// The board's int width.
    pub fn width(&self) -> IntWidth {
        self.width
    }

    /// Encodes `req` with every argument at `width` into a fresh buffer
    /// (useful outside `Framed`; v2 and tuner layouts).
    pub fn encode_request(width: IntWidth, req: &Request) -> Result<BytesMut, FrameError> {
        let mut out = BytesMut::with_capacity(8 + req.args.len() * 9);
        write_request(None, width, req, &mut out)?;
        Ok(out)
    }

    /// Encodes `req` in `firmware`'s argument layout into a fresh buffer.
    pub fn encode_for(
        firmware: Firmware,
        width: IntWidth,
        req: &Request,
    ) -> Result<BytesMut, FrameError> {
        let mut out = BytesMut::with_capacity(8 + req.args.len() * 9);
        write_request(Some(firmware), width, req, &mut out)?;
        Ok(out)
    }

    /// Forgets any partial message (after the link was reopened).
    pub fn reset(&mut self) {
        self.scanned = 0;
        self.escaped = false;
        self.pending.clear();
    }

    fn discard(reason: DiscardReason, bytes: &[u8]) -> Inbound {
        Inbound::Discarded {
            reason,
            len: bytes.len(),
            excerpt: Bytes::copy_from_slice(&bytes[..bytes.len().min(EXCERPT_LEN)]),
        }
    }

    /// Turns one terminated frame (without its `;`) into items on `pending`.
    fn parse_frame(&mut self, raw: &[u8]) {
        // Stray CR/LF between messages is tolerated silently.
        let start = raw
            .iter()
            .position(|b| !matches!(b, b'\r' | b'\n'))
            .unwrap_or(raw.len());
        let raw = &raw[start..];
        if raw.is_empty() {
            return; // a lone `;` (or CR/LF then `;`): nothing to report
        }

        // Un-escape the whole frame into one buffer and remember where each
        // field ends; the arguments are then cheap slices of that buffer.
        let mut plain = BytesMut::with_capacity(raw.len());
        let mut ends: Vec<usize> = Vec::with_capacity(20);
        let mut escaped = false;
        for &b in raw {
            if escaped {
                plain.put_u8(b);
                escaped = false;
            } else if b == ESCAPE {
                escaped = true;
            } else if b == FIELD_SEP {
                ends.push(plain.len());
            } else {
                plain.put_u8(b);
            }
        }
        ends.push(plain.len());
        let plain = plain.freeze();
        let head = plain.slice(..ends[0]);
        let fields: Vec<Bytes> = ends.windows(2).map(|w| plain.slice(w[0]..w[1])).collect();
        let digits = head.iter().rev().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            self.pending
                .push_back(Self::discard(DiscardReason::NoCommandNumber, raw));
            return;
        }
        let junk = head.len() - digits;
        let id = std::str::from_utf8(&head[junk..])
            .ok()
            .and_then(|s| s.parse::<u16>().ok());
        let Some(id) = id else {
            self.pending
                .push_back(Self::discard(DiscardReason::BadCommandNumber, raw));
            return;
        };
        if junk > 0 {
            self.pending
                .push_back(Self::discard(DiscardReason::LeadingNoise, &head[..junk]));
        }
        self.pending
            .push_back(Inbound::Message(Reply { id, args: fields }));
    }
}

fn write_request(
    firmware: Option<Firmware>,
    int: IntWidth,
    req: &Request,
    out: &mut BytesMut,
) -> Result<(), FrameError> {
    let before = out.len();
    let layout = firmware.and_then(|fw| fw.op(req.id).map(|op| fw.layout(op, int)));
    out.put_slice(req.id.to_string().as_bytes());
    for (i, &value) in req.args.iter().enumerate() {
        let width = layout.map_or(int, |l| l.width(i));
        let (bytes, n) = width.to_le(value).ok_or_else(|| {
            out.truncate(before);
            FrameError::ArgumentOutOfRange { value, width }
        })?;
        out.put_u8(FIELD_SEP);
        for &b in &bytes[..n] {
            if needs_escape(b) {
                out.put_u8(ESCAPE);
            }
            out.put_u8(b);
        }
    }
    out.put_u8(CMD_SEP);
    let len = out.len() - before;
    if len > BOARD_RX_BUFFER {
        out.truncate(before);
        return Err(FrameError::TooLong { len });
    }
    Ok(())
}

impl Encoder<Outbound> for CmdCodec {
    type Error = FrameError;

    fn encode(&mut self, item: Outbound, dst: &mut BytesMut) -> Result<(), FrameError> {
        match item {
            Outbound::Command(req) => write_request(self.firmware, self.width, &req, dst),
            Outbound::ClearParser => {
                dst.put_u8(CMD_SEP);
                Ok(())
            }
        }
    }
}

impl Decoder for CmdCodec {
    type Item = Inbound;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, FrameError> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Ok(Some(item));
            }
            // Resume the scan where the previous call stopped, so a reply
            // arriving a few bytes at a time costs O(n) overall.
            let mut end = None;
            for (i, &b) in src[self.scanned..].iter().enumerate() {
                if self.escaped {
                    self.escaped = false;
                } else if b == ESCAPE {
                    self.escaped = true;
                } else if b == CMD_SEP {
                    end = Some(self.scanned + i);
                    break;
                }
            }
            match end {
                Some(end) => {
                    let frame = src.split_to(end + 1);
                    self.scanned = 0;
                    self.escaped = false;
                    self.parse_frame(&frame[..end]);
                }
                None => {
                    self.scanned = src.len();
                    if src.len() > self.max_frame {
                        let dropped = src.split_to(src.len());
                        self.scanned = 0;
                        self.escaped = false;
                        return Ok(Some(Self::discard(DiscardReason::Overlong, &dropped)));
                    }
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, FrameError> {
        if let Some(item) = self.decode(src)? {
            return Ok(Some(item));
        }
        if src.is_empty() {
            return Ok(None);
        }
        let rest = src.split_to(src.len());
        self.scanned = 0;
        self.escaped = false;
        Ok(Some(Self::discard(DiscardReason::Overlong, &rest)).filter(|_| !rest.is_empty()))
    }
}

/// Renders bytes for a log line: printable ASCII as is, the rest as `\xNN`.
pub fn escape_for_log(bytes: &[u8]) -> String {
    bytes
        .iter()
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect()
}

/// Convenience for tests and tools: decodes everything in `bytes` at once.
pub fn decode_all(width: IntWidth, bytes: &[u8]) -> Vec<Inbound> {
    let mut codec = CmdCodec::new(width);
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Ok(Some(item)) = codec.decode(&mut buf) {
        out.push(item);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(width: IntWidth, id: u16, args: &[i32]) -> Vec<u8> {
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

    #[test]
    fn positions_request_is_one_semicolon() {
        assert_eq!(enc(IntWidth::Two, 1, &[]), b"1;");
    }

    #[test]
    fn set_stepper_escapes_special_bytes() {
        // 0x2C = ',' and 0x3B = ';' must be escaped, 0x00 too.
        assert_eq!(
            enc(IntWidth::Two, 6, &[2, 0x3B2C]),
            b"6,\x02/\x00,/,/;;".to_vec()
        );
        assert_eq!(
            enc(IntWidth::Two, 3, &[1, -2]),
            b"3,\x01/\x00,\xfe\xff"
                .iter()
                .chain(b";")
                .copied()
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn thirteen_zero_counters_make_67_bytes() {
        let mut reply = b"1".to_vec();
        for _ in 0..13 {
            reply.extend_from_slice(b",/\x00/\x00");
        }
        reply.push(b';');
        assert_eq!(reply.len(), 67);
        let items = decode_all(IntWidth::Two, &reply);
        match &items[..] {
            [Inbound::Message(r)] => {
                assert_eq!(r.id, 1);
                assert_eq!(r.ints(IntWidth::Two), Some(vec![0; 13]));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn escaped_semicolon_is_not_end_of_message() {
        let bytes = enc(IntWidth::Two, 1, &[0x3B3B]);
        let items = decode_all(IntWidth::Two, &bytes);
        assert_eq!(items.len(), 1);
        let Inbound::Message(r) = &items[0] else {
            panic!("{items:?}")
        };
        assert_eq!(r.ints(IntWidth::Two), Some(vec![0x3B3B]));
    }

    #[test]
    fn noise_stuck_to_the_front_is_peeled_off() {
        let mut bytes = b"\r\n\xfejunk".to_vec();
        bytes.extend(enc(IntWidth::Two, 1, &[5, 7]));
        let items = decode_all(IntWidth::Two, &bytes);
        assert!(
            matches!(
                items[0],
                Inbound::Discarded {
                    reason: DiscardReason::LeadingNoise,
                    len: 5,
                    ..
                }
            ),
            "{items:?}"
        );
        let Inbound::Message(r) = &items[1] else {
            panic!("{items:?}")
        };
        assert_eq!((r.id, r.ints(IntWidth::Two)), (1, Some(vec![5, 7])));
    }

    #[test]
    fn stray_crlf_and_lone_semicolons_are_silent() {
        let items = decode_all(IntWidth::Two, b"\r\n;;\n12,\x10\x00;\r\n");
        assert_eq!(items.len(), 1, "{items:?}");
    }

    #[test]
    fn overlong_noise_is_dropped_and_decoding_resumes() {
        let mut codec = CmdCodec::with_max_frame(IntWidth::Two, 16);
        let mut buf = BytesMut::from(&[0xAAu8; 40][..]);
        let first = codec.decode(&mut buf).expect("decodes");
        assert!(matches!(
            first,
            Some(Inbound::Discarded {
                reason: DiscardReason::Overlong,
                len: 40,
                ..
            })
        ));
        buf.extend_from_slice(b"1,\x01\x00;");
        let Some(Inbound::Message(r)) = codec.decode(&mut buf).expect("decodes") else {
            panic!()
        };
        assert_eq!(r.ints(IntWidth::Two), Some(vec![1]));
    }

    #[test]
    fn v1_values_travel_as_four_bytes_and_indices_as_two() {
        // set_stepper (7 on v1) of stepper 3 to -5: index 03 00, value fb ff ff ff.
        let req = Request {
            id: 7,
            args: vec![3, -5],
        };
        let v1 = CmdCodec::encode_for(Firmware::V1, IntWidth::Two, &req).expect("encodes");
        assert_eq!(&v1[..], b"7,\x03/\x00,\xfb\xff\xff\xff;");
        // The same numbers on v2 (where 7 is set_accel): two bytes each.
        let v2 = CmdCodec::encode_for(Firmware::V2, IntWidth::Two, &req).expect("encodes");
        assert_eq!(&v2[..], b"7,\x03/\x00,\xfb\xff;");
        // A v1 target beyond 16 bits fits its long (the driver refuses it for
        // another reason: the positions reply could not carry it back).
        let far = Request {
            id: 3,
            args: vec![2, 70_000],
        };
        assert!(CmdCodec::encode_for(Firmware::V1, IntWidth::Two, &far).is_ok());
        assert!(CmdCodec::encode_for(Firmware::V2, IntWidth::Two, &far).is_err());
        // Through the Encoder as the driver uses it.
        let mut codec = CmdCodec::for_board(Firmware::V1, IntWidth::Two);
        let mut out = BytesMut::new();
        codec
            .encode(Outbound::Command(req), &mut out)
            .expect("encodes");
        assert_eq!(&out[..], &v1[..]);
    }

    #[test]
    fn oversize_request_is_refused() {
        let err = CmdCodec::encode_request(
            IntWidth::Four,
            &Request {
                id: 1,
                args: vec![0; 8],
            },
        );
        assert!(matches!(err, Err(FrameError::TooLong { .. })));
        let err = CmdCodec::encode_request(
            IntWidth::Two,
            &Request {
                id: 3,
                args: vec![0, 40_000],
            },
        );
        assert!(matches!(
            err,
            Err(FrameError::ArgumentOutOfRange { value: 40_000, .. })
        ));
    }
}
