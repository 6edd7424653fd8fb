//! Which global stepper index does what, on which board, within which limits.
//!
//! Global indices number the steppers of all boards concatenated in board
//! order (carriage board first), which is also the order of
//! `machine_state.stepper_positions`. A `Layout` can only be built from a
//! validated configuration, so its tables never point past the boards: the
//! firmware does not check indices and writes past its arrays when given a
//! wrong one.

use std::fmt;
use std::ops::Range;

use crate::protocol::commands::IntWidth;

use super::error::Invalid;
use super::schema::{RawLayout, RawOverride};
use super::sections::BoardConfig;

/// Most strings a machine can have (audmon's channel limit).
pub const MAX_STRINGS: usize = 12;

/// Limits of a stepper that no range covers: it must not move unless an
/// override says where it may go.
pub const UNUSED_LIMITS: (i32, i32) = (0, 0);

/// What a stepper is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The carriage stepper.
    X,
    /// The Z stepper of a string's pair at even offset from `z_first_index`.
    ZIn {
        /// String (= audio channel), from 0.
        string: usize,
    },
    /// The Z stepper of a string's pair at odd offset from `z_first_index`.
    ZOut {
        /// String (= audio channel), from 0.
        string: usize,
    },
    /// The tuning stepper of a string.
    Tuner {
        /// String (= audio channel), from 0.
        string: usize,
    },
    /// Covered by no range (a placeholder slot, or past the last stepper).
    Unused,
}

impl Role {
    /// The string this stepper belongs to, if any.
    pub fn string(self) -> Option<usize> {
        match self {
            Role::ZIn { string } | Role::ZOut { string } | Role::Tuner { string } => Some(string),
            Role::X | Role::Unused => None,
        }
    }

    /// Whether this is one of the two Z steppers of a string.
    pub fn is_z(self) -> bool {
        matches!(self, Role::ZIn { .. } | Role::ZOut { .. })
    }

    /// The stepper's name, by which commands address it: `x`, `z<s>in`,
    /// `z<s>out`, `tuner<s>` with `s` the string (= audio channel) from 0,
    /// as in the stepper map. An unused slot has none (only its index).
    pub fn name(self) -> Option<String> {
        match self {
            Role::X => Some("x".to_string()),
            Role::ZIn { string } => Some(format!("z{string}in")),
            Role::ZOut { string } => Some(format!("z{string}out")),
            Role::Tuner { string } => Some(format!("tuner{string}")),
            Role::Unused => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::X => f.write_str("X"),
            Role::ZIn { string } => write!(f, "Z in, string {string}"),
            Role::ZOut { string } => write!(f, "Z out, string {string}"),
            Role::Tuner { string } => write!(f, "tuner, string {string}"),
            Role::Unused => f.write_str("unused"),
        }
    }
}

/// A contiguous run of global stepper indices sharing a role kind.
#[derive(Debug, Clone, PartialEq)]
pub struct StepperRange {
    /// First global index.
    pub first: usize,
    /// Number of steppers (1 for X, 2 per string for Z, 1 per string for tuners).
    pub count: usize,
    /// Lower position limit of each stepper before overrides.
    pub min: i32,
    /// Upper position limit of each stepper before overrides.
    pub max: i32,
}

impl StepperRange {
    /// The global indices covered.
    pub fn indices(&self) -> Range<usize> {
        self.first..self.first + self.count
    }

    /// Whether `global` is covered.
    pub fn contains(&self, global: usize) -> bool {
        self.indices().contains(&global)
    }
}

/// A `[[layout.stepper]]` entry: limits of one stepper replacing its role's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepperOverride {
    /// Global index.
    pub index: usize,
    /// Replacement lower limit, if given.
    pub min: Option<i32>,
    /// Replacement upper limit, if given.
    pub max: Option<i32>,
}

/// The resolved stepper map of a machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    strings: usize,
    board_steppers: Vec<usize>,
    x: Option<StepperRange>,
    z: StepperRange,
    tuners: Option<StepperRange>,
    overrides: Vec<StepperOverride>,
    roles: Vec<Role>,
    limits: Vec<(i32, i32)>,
}

impl Layout {
    /// Number of strings, which is also the number of audio channels.
    pub fn strings(&self) -> usize {
        self.strings
    }

    /// Steppers of all boards together.
    pub fn total_steppers(&self) -> usize {
        self.roles.len()
    }

    /// The carriage stepper, if the machine has one.
    pub fn x(&self) -> Option<&StepperRange> {
        self.x.as_ref()
    }

    /// The Z steppers (two per string).
    pub fn z(&self) -> &StepperRange {
        &self.z
    }

    /// The tuning steppers (one per string), if the machine has them.
    pub fn tuners(&self) -> Option<&StepperRange> {
        self.tuners.as_ref()
    }

    /// Per-stepper limit overrides as configured.
    pub fn overrides(&self) -> &[StepperOverride] {
        &self.overrides
    }

    /// What stepper `global` is for; `Role::Unused` past the last stepper.
    pub fn role(&self, global: usize) -> Role {
        self.roles.get(global).copied().unwrap_or(Role::Unused)
    }

    /// The stepper `spec` names: a global index (`"3"`) or a name
    /// ([`Role::name`], any case: `x`, `z2in`, `z2out`, `tuner3`). An index
    /// is returned as it is (whether it exists is the gate's check); an
    /// unknown name is an error listing the names this machine has.
    pub fn stepper(&self, spec: &str) -> Result<usize, String> {
        let spec = spec.trim();
        if let Ok(i) = spec.parse::<usize>() {
            return Ok(i);
        }
        let wanted = spec.to_ascii_lowercase();
        self.roles
            .iter()
            .position(|r| r.name().as_deref() == Some(wanted.as_str()))
            .ok_or_else(|| {
                // Runs of names of one kind (x; the Z steppers; the tuners), each
                // as its first and last: "x, z0in to z5out, tuner0 to tuner5".
                let kind = |r: &Role| match r {
                    Role::ZIn { .. } | Role::ZOut { .. } => 1,
                    Role::Tuner { .. } => 2,
                    _ => 0,
                };
                let mut runs: Vec<(u8, String, String)> = Vec::new();
                for r in &self.roles {
                    let Some(name) = r.name() else { continue };
                    match runs.last_mut() {
                        Some((k, _, last)) if *k == kind(r) => *last = name,
                        _ => runs.push((kind(r), name.clone(), name)),
                    }
                }
                let shown: Vec<String> = runs
                    .into_iter()
                    .map(|(_, first, last)| {
                        if first == last {
                            first
                        } else {
                            format!("{first} to {last}")
                        }
                    })
                    .collect();
                format!(
                    "no stepper is named `{spec}`: give an index from 0 to {} or a name: {} \
                     (x, z<string>in, z<string>out, tuner<string>)",
                    self.roles.len().saturating_sub(1),
                    shown.join(", ")
                )
            })
    }

    /// Position limits `(min, max)` of stepper `global` after overrides;
    /// `UNUSED_LIMITS` for unused steppers without an override and past the
    /// last stepper.
    pub fn limits(&self, global: usize) -> (i32, i32) {
        self.limits.get(global).copied().unwrap_or(UNUSED_LIMITS)
    }

    /// Board index and index on that board of stepper `global`.
    pub fn locate(&self, global: usize) -> Option<(usize, usize)> {
        let mut first = 0;
        for (board, &count) in self.board_steppers.iter().enumerate() {
            if global < first + count {
                return Some((board, global - first));
            }
            first += count;
        }
        None
    }

    /// Global index of stepper `local` of board `board`, or `None` when either
    /// is out of range.
    pub fn try_global(&self, board: usize, local: usize) -> Option<usize> {
        let range = self.board_range(board)?;
        (local < range.len()).then_some(range.start + local)
    }

    /// Global index of stepper `local` of board `board`.
    ///
    /// # Panics
    /// If `board` or `local` is out of range: both come from this
    /// configuration, so that is a programming error, and going on would
    /// address another stepper than the one meant. Use `try_global` for
    /// indices from outside.
    pub fn global(&self, board: usize, local: usize) -> usize {
        match self.try_global(board, local) {
            Some(g) => g,
            None => panic!(
                "stepper {local} of board {board} does not exist (boards hold {:?} steppers)",
                self.board_steppers
            ),
        }
    }

    /// Global indices of board `board`'s steppers.
    pub fn board_range(&self, board: usize) -> Option<Range<usize>> {
        let count = *self.board_steppers.get(board)?;
        let first: usize = self.board_steppers[..board].iter().sum();
        Some(first..first + count)
    }

    /// Global indices `(in, out)` of string `string`'s Z pair.
    ///
    /// # Panics
    /// If `string >= self.strings()` (a programming error, see `global`).
    pub fn z_pair(&self, string: usize) -> (usize, usize) {
        assert!(
            string < self.strings,
            "string {string} does not exist (the machine has {})",
            self.strings
        );
        let zin = self.z.first + 2 * string;
        (zin, zin + 1)
    }

    /// The `[layout]` table that builds this layout again.
    pub(crate) fn to_raw(&self) -> RawLayout {
        let wide = |v: i32| Some(i64::from(v));
        let index = |i: usize| i64::try_from(i).ok();
        RawLayout {
            strings: self.strings as i64,
            x_index: self.x.as_ref().and_then(|r| index(r.first)),
            x_min: self.x.as_ref().and_then(|r| wide(r.min)),
            x_max: self.x.as_ref().and_then(|r| wide(r.max)),
            x_speed: None,
            z_first_index: self.z.first as i64,
            z_min: wide(self.z.min),
            z_max: wide(self.z.max),
            z_speed: None,
            tuner_first_index: self.tuners.as_ref().and_then(|r| index(r.first)),
            tuner_min: self.tuners.as_ref().and_then(|r| wide(r.min)),
            tuner_max: self.tuners.as_ref().and_then(|r| wide(r.max)),
            tuner_speed: None,
            stepper: self
                .overrides
                .iter()
                .map(|o| RawOverride {
                    index: o.index as i64,
                    min: o.min.map(i64::from),
                    max: o.max.map(i64::from),
                })
                .collect(),
        }
    }
}

/// Where a stepper's limit comes from, to name that key in errors.
#[derive(Clone)]
enum Source {
    Range(&'static str),
    Override(usize, &'static str),
    Unused,
}

impl Source {
    fn key(&self) -> String {
        match self {
            Source::Range(k) => format!("layout.{k}"),
            Source::Override(k, f) => format!("layout.stepper[{k}].{f}"),
            // Only reached for messages: the default of an unused stepper is 0.
            Source::Unused => "layout.stepper".to_string(),
        }
    }
}

fn to_i32(key: &str, v: i64) -> Result<i32, Invalid> {
    i32::try_from(v)
        .map_err(|_| Invalid::new(key, format!("{v} does not fit a 32-bit position counter")))
}

fn to_index(key: &str, v: i64) -> Result<usize, Invalid> {
    usize::try_from(v)
        .map_err(|_| Invalid::new(key, format!("a stepper index cannot be negative ({v})")))
}

fn show(r: &Range<usize>) -> String {
    match r.len() {
        0 => "none".to_string(),
        1 => format!("stepper {}", r.start),
        _ => format!("steppers {} to {}", r.start, r.end - 1),
    }
}

/// Defaults of one kind of range.
struct Kind {
    name: &'static str,
    index_key: &'static str,
    min_key: &'static str,
    max_key: &'static str,
    speed_key: &'static str,
    motor_key: &'static str,
    default_min: i64,
    default_max: i64,
}

const X: Kind = Kind {
    name: "X",
    index_key: "x_index",
    min_key: "x_min",
    max_key: "x_max",
    speed_key: "x_speed",
    motor_key: "motor.x.speed",
    default_min: 0,
    default_max: 2600,
};
const Z: Kind = Kind {
    name: "Z",
    index_key: "z_first_index",
    min_key: "z_min",
    max_key: "z_max",
    speed_key: "z_speed",
    motor_key: "motor.z.speed",
    default_min: -100,
    default_max: 100,
};
const TUNER: Kind = Kind {
    name: "tuner",
    index_key: "tuner_first_index",
    min_key: "tuner_min",
    max_key: "tuner_max",
    speed_key: "tuner_speed",
    motor_key: "motor.tuners.speed",
    default_min: -100_000,
    default_max: 100_000,
};

/// Builds and checks one range; `None` when its index is not configured.
fn range(
    kind: &Kind,
    index: Option<i64>,
    min: Option<i64>,
    max: Option<i64>,
    speed: Option<f64>,
    count: usize,
    total: usize,
) -> Result<Option<StepperRange>, Invalid> {
    let key = |k: &str| format!("layout.{k}");
    if speed.is_some() {
        // The speed is sent to the board now, beside its acceleration and
        // limits; one setting, so the board and the host agree.
        return Err(Invalid::new(
            key(kind.speed_key),
            format!(
                "moved to {} (the speed sent to the board, [motor])",
                kind.motor_key
            ),
        ));
    }
    let Some(index) = index else {
        // A limit without its index is a layout the user did not mean.
        for (k, set) in [(kind.min_key, min.is_some()), (kind.max_key, max.is_some())] {
            if set {
                return Err(Invalid::new(
                    key(k),
                    format!(
                        "set, but layout.{} is not, so there are no {} steppers",
                        kind.index_key, kind.name
                    ),
                ));
            }
        }
        return Ok(None);
    };
    let first = to_index(&key(kind.index_key), index)?;
    let span = first..first.saturating_add(count);
    if span.end > total {
        return Err(Invalid::new(
            key(kind.index_key),
            format!(
                "the {} steppers would be {}, but the boards hold {} steppers in total ({})",
                kind.name,
                show(&span),
                total,
                show(&(0..total)),
            ),
        ));
    }
    let lo = to_i32(&key(kind.min_key), min.unwrap_or(kind.default_min))?;
    let hi = to_i32(&key(kind.max_key), max.unwrap_or(kind.default_max))?;
    if lo > hi {
        let (k, other) = if min.is_some() {
            (kind.min_key, kind.max_key)
        } else {
            (kind.max_key, kind.min_key)
        };
        return Err(Invalid::new(
            key(k),
            format!(
                "{} minimum {lo} is above its maximum {hi} (layout.{other})",
                kind.name
            ),
        ));
    }
    Ok(Some(StepperRange {
        first,
        count,
        min: lo,
        max: hi,
    }))
}

/// Resolves and checks `[layout]` against the boards' stepper counts.
pub(crate) fn build(raw: &RawLayout, boards: &[BoardConfig]) -> Result<Layout, Invalid> {
    let strings = usize::try_from(raw.strings)
        .ok()
        .filter(|s| (1..=MAX_STRINGS).contains(s))
        .ok_or_else(|| {
            Invalid::new(
                "layout.strings",
                format!(
                    "must be 1 to {MAX_STRINGS} (one audio channel each), not {}",
                    raw.strings
                ),
            )
        })?;
    let board_steppers: Vec<usize> = boards.iter().map(|b| b.steppers).collect();
    let total: usize = board_steppers.iter().sum();

    let x = range(&X, raw.x_index, raw.x_min, raw.x_max, raw.x_speed, 1, total)?;
    let z = range(
        &Z,
        Some(raw.z_first_index),
        raw.z_min,
        raw.z_max,
        raw.z_speed,
        2 * strings,
        total,
    )?
    // `Some` index in, `Some` range out; spelled out rather than unwrapped.
    .ok_or_else(|| Invalid::new("layout.z_first_index", "required"))?;
    let tuners = range(
        &TUNER,
        raw.tuner_first_index,
        raw.tuner_min,
        raw.tuner_max,
        raw.tuner_speed,
        strings,
        total,
    )?;

    // Overlaps are reported at the later range's key: that is the one whose
    // start is most likely off by the other's length.
    let mut placed: Vec<(&Kind, &StepperRange)> = Vec::new();
    for (kind, r) in [(&X, x.as_ref()), (&Z, Some(&z)), (&TUNER, tuners.as_ref())] {
        let Some(r) = r else { continue };
        for (other_kind, other) in &placed {
            if r.first < other.first + other.count && other.first < r.first + r.count {
                return Err(Invalid::new(
                    format!("layout.{}", kind.index_key),
                    format!(
                        "the {} steppers ({}) overlap the {} steppers ({}, layout.{})",
                        kind.name,
                        show(&r.indices()),
                        other_kind.name,
                        show(&other.indices()),
                        other_kind.index_key
                    ),
                ));
            }
        }
        placed.push((kind, r));
    }

    let mut roles = vec![Role::Unused; total];
    let mut sources = vec![(Source::Unused, Source::Unused); total];
    let mut limits = vec![UNUSED_LIMITS; total];
    if let Some(r) = &x {
        roles[r.first] = Role::X;
    }
    for offset in 0..z.count {
        let string = offset / 2;
        roles[z.first + offset] = if offset % 2 == 0 {
            Role::ZIn { string }
        } else {
            Role::ZOut { string }
        };
    }
    if let Some(r) = &tuners {
        for string in 0..r.count {
            roles[r.first + string] = Role::Tuner { string };
        }
    }
    for (kind, r) in &placed {
        for g in r.indices() {
            limits[g] = (r.min, r.max);
            sources[g] = (Source::Range(kind.min_key), Source::Range(kind.max_key));
        }
    }

    let mut overrides = Vec::with_capacity(raw.stepper.len());
    let mut seen: Vec<Option<usize>> = vec![None; total];
    for (k, o) in raw.stepper.iter().enumerate() {
        let key = format!("layout.stepper[{k}].index");
        let index = to_index(&key, o.index)?;
        if index >= total {
            return Err(Invalid::new(
                key,
                format!(
                    "stepper {index} does not exist: the boards hold {total} steppers ({})",
                    show(&(0..total))
                ),
            ));
        }
        if let Some(first) = seen[index] {
            return Err(Invalid::new(
                key,
                format!("stepper {index} is already overridden by layout.stepper[{first}]"),
            ));
        }
        seen[index] = Some(k);
        let min = o
            .min
            .map(|v| to_i32(&format!("layout.stepper[{k}].min"), v))
            .transpose()?;
        let max = o
            .max
            .map(|v| to_i32(&format!("layout.stepper[{k}].max"), v))
            .transpose()?;
        if let Some(v) = min {
            limits[index].0 = v;
            sources[index].0 = Source::Override(k, "min");
        }
        if let Some(v) = max {
            limits[index].1 = v;
            sources[index].1 = Source::Override(k, "max");
        }
        overrides.push(StepperOverride { index, min, max });
    }

    for g in 0..total {
        let (lo, hi) = limits[g];
        let (lo_src, hi_src) = &sources[g];
        if lo > hi {
            // Name the override if there is one: the role's own min <= max
            // was checked above, so an override made them cross.
            let src = match (lo_src, hi_src) {
                (Source::Override(..), _) => lo_src,
                _ => hi_src,
            };
            let mut e = Invalid::new(
                src.key(),
                format!(
                    "stepper {g} ({}): minimum {lo} is above maximum {hi} after overrides",
                    roles[g]
                ),
            );
            if let Source::Override(k, _) = src {
                e = e.at(format!("layout.stepper[{k}]"));
            }
            return Err(e);
        }
    }

    // A limit the board's `int` cannot carry would be refused (or worse,
    // truncated by another host) at the first move: catch it at load.
    let mut first = 0;
    for board in boards {
        let width: IntWidth = board.int_bytes;
        for g in first..first + board.steppers {
            let (lo, hi) = limits[g];
            for (v, src) in [(lo, &sources[g].0), (hi, &sources[g].1)] {
                let context = || format!("stepper {g}, {}", roles[g]);
                fits_board(v, width, "ints", board, context)
                    .map_err(|m| Invalid::new(src.key(), m))?;
            }
        }
        first += board.steppers;
    }

    Ok(Layout {
        strings,
        board_steppers,
        x,
        z,
        tuners,
        overrides,
        roles,
        limits,
    })
}

/// Whether `v` fits `width`, the width board `board` reads `what` at (its
/// ints, or one command's argument); otherwise what to say, with `context`
/// (the stepper, or the firmware) in brackets. The one check of a value
/// against a board's width, for the layout's limits and the motor parameters.
pub(super) fn fits_board(
    v: i32,
    width: IntWidth,
    what: &str,
    board: &BoardConfig,
    context: impl FnOnce() -> String,
) -> Result<(), String> {
    if width.fits(v) {
        return Ok(());
    }
    let (lo, hi) = width.range();
    Err(format!(
        "{v} does not fit the {}-byte {what} of board `{}` ({}): it takes {lo} to {hi}",
        width.bytes(),
        board.name,
        context()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::commands::Firmware;
    use std::time::Duration;

    fn board(name: &str, steppers: usize, int_bytes: IntWidth) -> BoardConfig {
        BoardConfig {
            name: name.into(),
            port: "/dev/null".into(),
            baud: 115_200,
            int_bytes,
            firmware: Firmware::V2,
            steppers,
            reset_wait: Duration::ZERO,
            restore_counters_after_reset: true,
            poll_interval: Duration::from_millis(500),
            reply_timeout: Duration::from_secs(1),
            move_margin: Duration::ZERO,
        }
    }

    fn raw(strings: i64, x: Option<i64>, z: i64, tuner: Option<i64>) -> RawLayout {
        RawLayout {
            strings,
            x_index: x,
            x_min: None,
            x_max: None,
            x_speed: None,
            z_first_index: z,
            z_min: None,
            z_max: None,
            z_speed: None,
            tuner_first_index: tuner,
            tuner_min: None,
            tuner_max: None,
            tuner_speed: None,
            stepper: Vec::new(),
        }
    }

    #[test]
    fn locate_and_global_are_inverse_across_boards() {
        let boards = [
            board("a", 5, IntWidth::Two),
            board("b", 3, IntWidth::Four),
            board("c", 4, IntWidth::Four),
        ];
        let l = build(&raw(2, Some(0), 1, Some(8)), &boards).unwrap();
        assert_eq!(l.total_steppers(), 12);
        for g in 0..12 {
            let (b, i) = l.locate(g).unwrap();
            assert_eq!(l.global(b, i), g);
        }
        assert_eq!(l.locate(5), Some((1, 0)));
        assert_eq!(l.locate(11), Some((2, 3)));
        assert_eq!(l.locate(12), None);
        assert_eq!(l.try_global(3, 0), None);
        assert_eq!(l.board_range(2), Some(8..12));
        assert_eq!(l.board_range(3), None);
        // Steppers 5..8 are covered by no range.
        assert_eq!(l.role(6), Role::Unused);
        assert_eq!(l.limits(6), UNUSED_LIMITS);
        assert_eq!(l.role(9), Role::Tuner { string: 1 });
        assert_eq!(l.role(4), Role::ZOut { string: 1 });
    }

    #[test]
    fn names_and_indices_address_the_same_steppers() {
        let boards = [board("a", 13, IntWidth::Two), board("b", 6, IntWidth::Four)];
        let l = build(&raw(6, Some(0), 1, Some(13)), &boards).unwrap();
        for g in 0..l.total_steppers() {
            let name = l
                .role(g)
                .name()
                .expect("every stepper of stringdriver-2 has a role");
            assert_eq!(l.stepper(&name), Ok(g), "{name}");
            assert_eq!(l.stepper(&name.to_uppercase()), Ok(g), "any case");
            assert_eq!(l.stepper(&g.to_string()), Ok(g));
        }
        assert_eq!(l.stepper("x"), Ok(0));
        assert_eq!(l.stepper("z2in"), Ok(5));
        assert_eq!(l.stepper("z2out"), Ok(6));
        assert_eq!(l.stepper("tuner3"), Ok(16));
        let e = l.stepper("z9in").unwrap_err();
        assert!(e.contains("`z9in`") && e.contains("0 to 18"), "{e}");
        assert!(
            e.contains("a name: x, z0in to z5out, tuner0 to tuner5 ("),
            "{e}"
        );
    }

    #[test]
    fn the_raw_layout_builds_the_same_layout() {
        let boards = [board("a", 13, IntWidth::Two), board("b", 6, IntWidth::Four)];
        let mut r = raw(6, Some(0), 1, Some(13));
        r.z_max = Some(90);
        r.stepper.push(RawOverride {
            index: 4,
            min: Some(-10),
            max: None,
        });
        let l = build(&r, &boards).unwrap();
        assert_eq!(l.limits(4), (-10, 90));
        assert_eq!(build(&l.to_raw(), &boards).unwrap(), l);
    }

    #[test]
    fn z_range_is_required_to_fit() {
        let boards = [board("a", 4, IntWidth::Two)];
        let e = build(&raw(2, None, 1, None), &boards).unwrap_err();
        assert_eq!(e.key, "layout.z_first_index");
        assert!(e.message.contains("steppers 1 to 4"), "{}", e.message);
        assert!(build(&raw(2, None, 0, None), &boards).is_ok());
    }
}
