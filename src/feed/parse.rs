//! Pure parsers of the two feed files: no I/O, no panics, whatever the input.

use super::{FeedError, CONTROL_FILE, PEAKS_FILE};

/// Most channels a control file may announce. audmon runs 1 to 12; the margin
/// is for larger rigs, the cap keeps a garbage control file from making the
/// reader allocate or read megabytes.
pub const MAX_CHANNELS: usize = 64;

/// Most partials per channel a control file may announce (audmon uses 12).
pub const MAX_PARTIALS: usize = 256;

/// Bytes of one entry of `audio_peaks`: two native-endian `f32`, frequency
/// then amplitude.
pub const ENTRY_BYTES: usize = 8;

/// The content of `audio_control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Control {
    /// audmon's process ID; always > 0 (0 and negative values would make a
    /// liveness check address a process group instead of a process).
    pub pid: i32,
    /// Number of channels written, in `1..=MAX_CHANNELS`.
    pub channels: usize,
    /// Number of partials per channel, in `1..=MAX_PARTIALS`.
    pub partials: usize,
}

impl Control {
    /// Bytes of `audio_peaks` this control announces:
    /// channels x partials x [`ENTRY_BYTES`]. Cannot overflow for a parsed
    /// control (at most 128 KiB); saturates for a hand-made one.
    pub fn frame_bytes(&self) -> usize {
        self.channels
            .saturating_mul(self.partials)
            .saturating_mul(ENTRY_BYTES)
    }
}

/// One analysis frame, checked: every value finite, every amplitude >= 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// The control the frame was read with.
    pub control: Control,
    /// Per channel, its `control.partials` entries as (frequency Hz,
    /// amplitude); amplitude 0 is an empty slot.
    pub entries: Vec<Vec<(f32, f32)>>,
    /// Per channel: entries whose amplitude is > 0.
    pub voice_count: Vec<i32>,
    /// Per channel: sum of the amplitudes (finite).
    pub amp_sum: Vec<f32>,
}

/// Parses `audio_control`: three lines, PID, channels, partials per channel.
///
/// Tolerated: a trailing newline, CRLF line ends, spaces or tabs around a
/// number. Anything else (missing or extra lines, signs or text, values out
/// of range) is [`FeedError::Invalid`] with a message naming the file, the
/// line and what was wrong.
pub fn parse_control(text: &str) -> Result<Control, FeedError> {
    let invalid = |what: String| FeedError::Invalid(format!("{CONTROL_FILE}: {what}"));
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    if lines.len() != 3 {
        return Err(invalid(format!(
            "expected 3 lines (pid, channels, partials), found {}",
            lines.len()
        )));
    }
    let number = |index: usize, name: &str, max: u64| -> Result<u64, FeedError> {
        let raw = lines.get(index).copied().unwrap_or_default();
        // Only plain digits: `str::parse` would also take "+12", which audmon
        // never writes, so it would mean the file is not what we think.
        if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(format!(
                "line {} ({name}) is {:?}, not a whole number",
                index + 1,
                excerpt(raw)
            )));
        }
        match raw.parse::<u64>() {
            Ok(v) if (1..=max).contains(&v) => Ok(v),
            _ => Err(invalid(format!(
                "line {} ({name}) is {}, outside 1 to {max}",
                index + 1,
                excerpt(raw)
            ))),
        }
    };
    let pid = number(0, "pid", i32::MAX as u64)?;
    let channels = number(1, "channels", MAX_CHANNELS as u64)?;
    let partials = number(2, "partials", MAX_PARTIALS as u64)?;
    Ok(Control {
        pid: i32::try_from(pid).map_err(|_| invalid(format!("pid {pid} out of range")))?,
        channels: usize::try_from(channels)
            .map_err(|_| invalid(format!("channels {channels} out of range")))?,
        partials: usize::try_from(partials)
            .map_err(|_| invalid(format!("partials {partials} out of range")))?,
    })
}

/// Parses the first `ctl.frame_bytes()` bytes of `audio_peaks` (the tail, if
/// any, is ignored) and derives each channel's `voice_count` and `amp_sum`.
///
/// [`FeedError::Invalid`] when the bytes are fewer than the control
/// announces, when a frequency or amplitude is not finite, when an amplitude
/// is negative (naming the channel and entry), or when a channel's amplitude
/// sum overflows `f32`.
pub fn parse_peaks(bytes: &[u8], ctl: &Control) -> Result<Frame, FeedError> {
    let invalid = |what: String| FeedError::Invalid(format!("{PEAKS_FILE}: {what}"));
    let need = ctl.frame_bytes();
    if ctl.channels == 0 || ctl.partials == 0 {
        return Err(invalid(format!(
            "control announces {} channels x {} partials",
            ctl.channels, ctl.partials
        )));
    }
    let Some(body) = bytes.get(..need) else {
        return Err(invalid(format!(
            "holds {} bytes, but {CONTROL_FILE} announces {} channels x {} partials x {ENTRY_BYTES} = {need} bytes (truncated, or audmon mid-restart)",
            bytes.len(),
            ctl.channels,
            ctl.partials
        )));
    };
    let channel_bytes = ctl.partials.saturating_mul(ENTRY_BYTES);
    let mut entries = Vec::with_capacity(ctl.channels);
    let mut voice_count = Vec::with_capacity(ctl.channels);
    let mut amp_sum = Vec::with_capacity(ctl.channels);
    for (c, channel) in body.chunks_exact(channel_bytes).enumerate() {
        let mut list = Vec::with_capacity(ctl.partials);
        let mut voices = 0i32;
        let mut sum = 0f32;
        for (i, entry) in channel.chunks_exact(ENTRY_BYTES).enumerate() {
            let (frequency, amplitude) = decode_entry(entry);
            if !frequency.is_finite() {
                return Err(invalid(format!(
                    "channel {c} entry {i}: frequency is {frequency}"
                )));
            }
            if !amplitude.is_finite() || amplitude < 0.0 {
                return Err(invalid(format!(
                    "channel {c} entry {i}: amplitude is {amplitude}"
                )));
            }
            if amplitude > 0.0 {
                voices += 1;
            }
            sum += amplitude;
            list.push((frequency, amplitude));
        }
        if !sum.is_finite() {
            return Err(invalid(format!(
                "channel {c}: amplitude sum overflows a 32-bit float"
            )));
        }
        entries.push(list);
        voice_count.push(voices);
        amp_sum.push(sum);
    }
    Ok(Frame {
        control: *ctl,
        entries,
        voice_count,
        amp_sum,
    })
}

/// Encodes entries the way audmon lays them out (native-endian `f32` pairs).
/// The inverse of the decoding in [`parse_peaks`]; used by the simulator.
pub fn encode_entry(out: &mut Vec<u8>, frequency: f32, amplitude: f32) {
    out.extend_from_slice(&frequency.to_ne_bytes());
    out.extend_from_slice(&amplitude.to_ne_bytes());
}

fn decode_entry(entry: &[u8]) -> (f32, f32) {
    let word = |at: usize| {
        let mut b = [0u8; 4];
        if let Some(src) = entry.get(at..at + 4) {
            b.copy_from_slice(src);
        }
        f32::from_ne_bytes(b)
    };
    (word(0), word(4))
}

/// A line quoted in an error: capped, since the file may be anything.
fn excerpt(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(frame: &[&[(f32, f32)]]) -> Vec<u8> {
        let mut out = Vec::new();
        for ch in frame {
            for &(f, a) in *ch {
                encode_entry(&mut out, f, a);
            }
        }
        out
    }

    fn msg(r: Result<impl std::fmt::Debug, FeedError>) -> String {
        match r {
            Err(FeedError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn control_accepts_the_documented_form_and_tolerated_variants() {
        let want = Control {
            pid: 4182,
            channels: 4,
            partials: 12,
        };
        for text in [
            "4182\n4\n12\n",
            "4182\n4\n12",
            "4182\r\n4\r\n12\r\n",
            "  4182 \n\t4\n 12  \n",
        ] {
            assert_eq!(parse_control(text).unwrap(), want, "{text:?}");
        }
    }

    #[test]
    fn control_rejects_everything_else_with_a_message() {
        let cases = [
            ("", "found 0"),
            ("4182\n4\n", "found 2"),
            ("4182\n4\n12\n\n", "found 4"),
            ("4182\n4\n12\n7\n", "found 4"),
            ("pid\n4\n12\n", "line 1 (pid)"),
            ("4182\n-4\n12\n", "line 2 (channels)"),
            ("4182\n+4\n12\n", "line 2 (channels)"),
            ("4182\n4.0\n12\n", "line 2 (channels)"),
            ("4182\n0\n12\n", "outside 1 to 64"),
            ("4182\n65\n12\n", "outside 1 to 64"),
            ("4182\n4\n257\n", "outside 1 to 256"),
            ("4182\n4\n0\n", "line 3 (partials)"),
            ("0\n4\n12\n", "line 1 (pid)"),
            ("2147483648\n4\n12\n", "line 1 (pid)"),
            ("4182\n99999999999999999999999\n12\n", "line 2 (channels)"),
            ("4182 4 12\n", "found 1"),
        ];
        for (text, needle) in cases {
            let m = msg(parse_control(text));
            assert!(m.starts_with("audio_control: "), "{m}");
            assert!(m.contains(needle), "{text:?}: {m}");
        }
    }

    #[test]
    fn peaks_derive_voice_count_and_amp_sum() {
        let ctl = Control {
            pid: 1,
            channels: 2,
            partials: 3,
        };
        let b = bytes(&[
            &[(110.0, 1.5), (220.0, 0.0), (330.0, 0.5)],
            &[(0.0, 0.0), (0.0, 0.0), (0.0, 0.0)],
        ]);
        let f = parse_peaks(&b, &ctl).unwrap();
        assert_eq!(f.voice_count, vec![2, 0]);
        assert_eq!(f.amp_sum, vec![2.0, 0.0]);
        assert_eq!(f.entries[0][2], (330.0, 0.5));
    }

    #[test]
    fn peaks_ignore_the_tail_and_refuse_a_short_file() {
        let ctl = Control {
            pid: 1,
            channels: 1,
            partials: 2,
        };
        let mut b = bytes(&[&[(1.0, 1.0), (2.0, 2.0)]]);
        b.extend_from_slice(&[0xff; 13]);
        assert_eq!(parse_peaks(&b, &ctl).unwrap().amp_sum, vec![3.0]);
        let m = msg(parse_peaks(&b[..15], &ctl));
        assert!(
            m.contains("holds 15 bytes") && m.contains("= 16 bytes"),
            "{m}"
        );
    }

    #[test]
    fn peaks_refuse_non_finite_and_negative_values_naming_the_entry() {
        let ctl = Control {
            pid: 1,
            channels: 2,
            partials: 2,
        };
        for (bad, needle) in [
            ((1.0, f32::NAN), "amplitude is NaN"),
            ((1.0, f32::INFINITY), "amplitude is inf"),
            ((1.0, -0.5), "amplitude is -0.5"),
            ((f32::NEG_INFINITY, 1.0), "frequency is -inf"),
        ] {
            let b = bytes(&[&[(1.0, 1.0), (1.0, 1.0)], &[(1.0, 1.0), bad]]);
            let m = msg(parse_peaks(&b, &ctl));
            assert!(m.contains("channel 1 entry 1") && m.contains(needle), "{m}");
        }
        let b = bytes(&[
            &[(1.0, f32::MAX), (1.0, f32::MAX)],
            &[(1.0, 0.0), (1.0, 0.0)],
        ]);
        assert!(msg(parse_peaks(&b, &ctl)).contains("channel 0: amplitude sum overflows"));
    }

    #[test]
    fn negative_zero_is_an_empty_slot() {
        let ctl = Control {
            pid: 1,
            channels: 1,
            partials: 1,
        };
        let f = parse_peaks(&bytes(&[&[(1.0, -0.0)]]), &ctl).unwrap();
        assert_eq!(f.voice_count, vec![0]);
    }
}
