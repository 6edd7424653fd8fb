//! A simulated audmon: writes the feed files the way audmon does, and a
//! model of how a string's partials depend on how close its Z steppers are.
//!
//! [`FeedWriter`] writes `audio_control` and `audio_peaks` in a directory
//! (a temporary one in tests, never the real `/dev/shm` feed of a running
//! audmon) and rewrites `audio_peaks` in place for every frame, as audmon
//! does, so readers meet the same torn-read hazard. [`partials_for_distance`]
//! turns a distance into a channel's partials for the demo.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::feed::{encode_entry, CONTROL_FILE, ENTRY_BYTES, PEAKS_FILE};

/// Writes a feed directory like audmon.
#[derive(Debug)]
pub struct FeedWriter {
    dir: PathBuf,
    channels: usize,
    partials: usize,
    pid: i32,
}

impl FeedWriter {
    /// Writes `audio_peaks` (every slot empty) and then `audio_control` with
    /// this process's PID, each through a temporary file and a rename, so a
    /// reader never sees either half-written. Existing files are replaced.
    ///
    /// `channels` and `partials` must be > 0; they are not capped, so tests
    /// can write what the reader must refuse.
    pub fn create(dir: &Path, channels: usize, partials: usize) -> io::Result<FeedWriter> {
        if channels == 0 || partials == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "channels and partials must be > 0",
            ));
        }
        channels
            .checked_mul(partials)
            .and_then(|n| n.checked_mul(ENTRY_BYTES))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "feed too large"))?;
        let pid = i32::try_from(std::process::id())
            .map_err(|_| io::Error::other("PID does not fit an i32"))?;
        let writer = FeedWriter {
            dir: dir.to_path_buf(),
            channels,
            partials,
            pid,
        };
        let empty = vec![Vec::new(); channels];
        replace(&writer.dir, PEAKS_FILE, &writer.encode(&empty)?)?;
        writer.write_control()?;
        Ok(writer)
    }

    /// The directory written.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Channels written.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Partials per channel.
    pub fn partials(&self) -> usize {
        self.partials
    }

    /// PID written in `audio_control`.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Rewrites `audio_control` with another PID (a dead one, to play an
    /// audmon that died without cleaning up).
    pub fn set_pid(&mut self, pid: i32) -> io::Result<()> {
        self.pid = pid;
        self.write_control()
    }

    /// Rewrites `audio_peaks` in place, same size, in one write, as audmon
    /// does (a concurrent reader may see part of the old frame).
    ///
    /// `frame` holds one list per channel, exactly `channels` of them; a
    /// list shorter than `partials` is padded with empty slots (0, 0), a
    /// longer one is an error. Values are written as given, NaN included.
    /// Fails with `NotFound` after [`remove`](FeedWriter::remove).
    pub fn write_frame(&mut self, frame: &[Vec<(f32, f32)>]) -> io::Result<()> {
        let bytes = self.encode(frame)?;
        // No `create`: audmon writes into the file it made, and writing
        // after `remove` must fail rather than quietly recreate it.
        let mut file = OpenOptions::new()
            .write(true)
            .open(self.dir.join(PEAKS_FILE))?;
        file.write_all(&bytes)
    }

    /// Deletes both files, as when audmon stops. Missing files are fine.
    pub fn remove(&self) -> io::Result<()> {
        for name in [CONTROL_FILE, PEAKS_FILE] {
            match fs::remove_file(self.dir.join(name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    fn write_control(&self) -> io::Result<()> {
        let text = format!("{}\n{}\n{}\n", self.pid, self.channels, self.partials);
        replace(&self.dir, CONTROL_FILE, text.as_bytes())
    }

    fn encode(&self, frame: &[Vec<(f32, f32)>]) -> io::Result<Vec<u8>> {
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        if frame.len() != self.channels {
            return Err(invalid(format!(
                "frame has {} channels, the feed {}",
                frame.len(),
                self.channels
            )));
        }
        let mut out = Vec::with_capacity(self.channels * self.partials * ENTRY_BYTES);
        for (c, channel) in frame.iter().enumerate() {
            if channel.len() > self.partials {
                return Err(invalid(format!(
                    "channel {c} has {} partials, the feed {}",
                    channel.len(),
                    self.partials
                )));
            }
            for &(frequency, amplitude) in channel {
                encode_entry(&mut out, frequency, amplitude);
            }
            for _ in channel.len()..self.partials {
                encode_entry(&mut out, 0.0, 0.0);
            }
        }
        Ok(out)
    }
}

/// Writes `dir/name` through a temporary file and a rename.
fn replace(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, dir.join(name))
}

/// Lowest fundamental the model gives a string, Hz.
const BASE_FUNDAMENTAL: f64 = 110.0;

/// Amplitude of the first partial of a string touched by its stepper.
const TOUCH_AMPLITUDE: f64 = 100.0;

/// Distance (steps) at which the amplitudes have halved.
const HALF_AMPLITUDE_DISTANCE: f64 = 50.0;

/// Steps of distance per partial lost.
const STEPS_PER_VOICE: f64 = 10.0;

/// A channel's partials when its Z steppers are `distance` steps from the
/// string (0 = touching). Always `partials` entries, (frequency Hz,
/// amplitude), the sounding ones first, the rest empty slots (0, 0).
///
/// The model:
/// - voices = `partials - floor(distance / 10)`, clamped to `0..=partials`:
///   closer means more partials sound;
/// - voice k (0-based) has amplitude
///   `100 / (1 + distance / 50) / (k + 1) * v`, where `v` in `[0.95, 1.05)`
///   comes from `seed` and `k` only: closer means louder, higher partials are
///   softer, and the variation never undoes the ordering in distance;
/// - voice k has frequency `f0 * (k + 1) * (1 + 0.0005 k^2)` (a slightly
///   inharmonic string), with `f0` in `[110, 220)` Hz from `seed`; frequencies
///   do not depend on distance.
///
/// Hence, for a fixed seed, a smaller distance never gives fewer voices nor
/// a smaller amplitude sum. A negative distance counts as 0; NaN and
/// infinity give no voices. Deterministic: same inputs, same bits.
pub fn partials_for_distance(distance: f32, partials: usize, seed: u64) -> Vec<(f32, f32)> {
    let mut out = vec![(0.0f32, 0.0f32); partials];
    if !distance.is_finite() {
        return out;
    }
    let d = f64::from(distance.max(0.0));
    let lost = (d / STEPS_PER_VOICE).floor();
    let voices = if lost >= partials as f64 {
        0
    } else {
        // `lost` is a whole number below `partials`, so the cast is exact.
        partials - lost as usize
    };
    let f0 = BASE_FUNDAMENTAL * (1.0 + unit(seed, u64::MAX));
    let loudness = TOUCH_AMPLITUDE / (1.0 + d / HALF_AMPLITUDE_DISTANCE);
    for (k, slot) in out.iter_mut().take(voices).enumerate() {
        let n = (k + 1) as f64;
        let variation = 0.95 + 0.1 * unit(seed, k as u64);
        let amplitude = loudness / n * variation;
        let frequency = f0 * n * (1.0 + 0.0005 * (k * k) as f64);
        *slot = (frequency as f32, amplitude as f32);
    }
    out
}

/// A deterministic number in `[0, 1)` from `seed` and `salt` (splitmix64).
fn unit(seed: u64, salt: u64) -> f64 {
    let mut z = seed
        .wrapping_add(salt.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touching_sounds_every_partial_and_far_sounds_none() {
        let near = partials_for_distance(0.0, 12, 7);
        assert!(near.iter().all(|&(f, a)| f > 0.0 && a > 0.0));
        let far = partials_for_distance(120.0, 12, 7);
        assert!(far.iter().all(|&p| p == (0.0, 0.0)));
        assert_eq!(partials_for_distance(f32::NAN, 12, 7), far);
        assert_eq!(partials_for_distance(-5.0, 12, 7), near);
    }

    #[test]
    fn voices_follow_the_documented_formula() {
        for (d, want) in [(0.0, 12), (9.9, 12), (10.0, 11), (55.0, 7), (115.0, 1)] {
            let p = partials_for_distance(d, 12, 1);
            assert_eq!(p.iter().filter(|e| e.1 > 0.0).count(), want, "distance {d}");
        }
    }

    #[test]
    fn same_inputs_same_bits_and_seeds_differ() {
        assert_eq!(
            partials_for_distance(20.0, 12, 3),
            partials_for_distance(20.0, 12, 3)
        );
        assert_ne!(
            partials_for_distance(20.0, 12, 3),
            partials_for_distance(20.0, 12, 4)
        );
    }
}
