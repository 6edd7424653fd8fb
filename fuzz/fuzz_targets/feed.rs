//! Any bytes as `audio_control` and `audio_peaks` through the feed parsers:
//! they must never panic, and a frame they accept must be what the feed
//! promises (one entry list per channel, finite values, non-negative
//! amplitudes, voice counts and sums that match the entries).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stringdriverd::feed::{parse_control, parse_peaks, Control, ENTRY_BYTES};

fuzz_target!(|data: &[u8]| {
    // The first byte splits the input: that many bytes (mod 64) of control
    // text, the rest peaks. The next two bytes also give a control of their
    // own, so the peaks parser is exercised even when the text is garbage.
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let cut = usize::from(first % 64).min(rest.len());
    let (text, peaks) = rest.split_at(cut);
    let parsed = parse_control(&String::from_utf8_lossy(text));
    if let Ok(ctl) = &parsed {
        assert!((1..=64).contains(&ctl.channels) && (1..=256).contains(&ctl.partials));
        assert!(ctl.pid > 0);
        check(peaks, ctl);
    }
    if let Some((&c, peaks)) = peaks.split_first() {
        if let Some((&p, peaks)) = peaks.split_first() {
            let ctl = Control {
                pid: 1,
                channels: usize::from(c % 16) + 1,
                partials: usize::from(p % 32) + 1,
            };
            check(peaks, &ctl);
        }
    }
});

fn check(peaks: &[u8], ctl: &Control) {
    let need = ctl.channels * ctl.partials * ENTRY_BYTES;
    match parse_peaks(peaks, ctl) {
        Ok(frame) => {
            assert!(peaks.len() >= need);
            assert_eq!(frame.entries.len(), ctl.channels);
            assert_eq!(frame.voice_count.len(), ctl.channels);
            assert_eq!(frame.amp_sum.len(), ctl.channels);
            for (c, list) in frame.entries.iter().enumerate() {
                assert_eq!(list.len(), ctl.partials);
                assert!(list
                    .iter()
                    .all(|&(f, a)| f.is_finite() && a.is_finite() && a >= 0.0));
                let voices = list.iter().filter(|e| e.1 > 0.0).count();
                assert_eq!(usize::try_from(frame.voice_count[c]).ok(), Some(voices));
                assert!(frame.amp_sum[c].is_finite() && frame.amp_sum[c] >= 0.0);
            }
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
        }
    }
}
