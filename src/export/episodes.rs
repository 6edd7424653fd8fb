//! Operations as the dataset's episodes: every operation of the host that
//! ran in the window, its parent (the schema has no parent column: an
//! operation's parent is the innermost other operation whose time span
//! holds its own), and for each frame the innermost operation running then.
//!
//! The operations of the window are held in memory (a few hundred bytes
//! each; a month of a host has thousands at most); frames are not.

use chrono::{DateTime, Utc};

/// One `operations` row.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    /// operation_id.
    pub operation_id: String,
    /// state_id (the snapshot before it), if any.
    pub state_id: Option<String>,
    /// recorded_at: when it started.
    pub start: DateTime<Utc>,
    /// completed_at: when it ended; `None` while it runs, and on rows of
    /// writers that do not set it.
    pub completed_at: Option<DateTime<Utc>>,
    /// operation_type.
    pub kind: String,
    /// operation_status.
    pub status: String,
    /// message.
    pub message: Option<String>,
    /// stepper_indices.
    pub stepper_indices: Vec<i32>,
    /// final_positions.
    pub final_positions: Vec<i32>,
}

impl Operation {
    /// The end of its span: completed_at; for a row still `started`, never
    /// (it runs to the end of the window); for a finished row without
    /// completed_at, its start (a row that only says it happened).
    fn end(&self) -> Option<DateTime<Utc>> {
        match self.completed_at {
            Some(t) => Some(t),
            None if self.status == "started" => None,
            None => Some(self.start),
        }
    }

    /// Whether it runs at `t`: start ≤ t < end.
    fn runs_at(&self, t: DateTime<Utc>) -> bool {
        self.start <= t && self.end().is_none_or(|e| t < e)
    }

    /// Whether its span holds `other`'s.
    fn holds(&self, other: &Operation) -> bool {
        self.start <= other.start
            && match (self.end(), other.end()) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(a), Some(b)) => b <= a,
            }
    }
}

/// The episodes of an export, and the cursor that gives each frame (in time
/// order) its episode.
#[derive(Debug)]
pub struct Episodes {
    ops: Vec<Operation>,
    parents: Vec<Option<usize>>,
    frames: Vec<u64>,
    /// Operations started at or before the last frame looked up.
    next: usize,
    /// Of those, the ones that may still be running.
    active: Vec<usize>,
}

impl Episodes {
    /// `ops` in the order [`super::query::operations`] reads them: by start,
    /// then longest first, so that a parent comes before its children.
    pub fn new(ops: Vec<Operation>) -> Episodes {
        let mut parents = Vec::with_capacity(ops.len());
        // Operations that may still hold later ones, outermost first.
        let mut open: Vec<usize> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            open.retain(|&j| ops[j].end().is_none_or(|e| e > op.start));
            parents.push(open.iter().rev().copied().find(|&j| ops[j].holds(op)));
            open.push(i);
        }
        let frames = vec![0; ops.len()];
        Episodes {
            ops,
            parents,
            frames,
            next: 0,
            active: Vec::new(),
        }
    }

    /// Number of episodes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The episode of a frame at `t`: the innermost operation running then
    /// (the latest started; on a tie the later listed, the shorter), or -1.
    /// Frames must come in time order.
    pub fn at(&mut self, t: DateTime<Utc>) -> i64 {
        while self.next < self.ops.len() && self.ops[self.next].start <= t {
            self.active.push(self.next);
            self.next += 1;
        }
        let ops = &self.ops;
        self.active.retain(|&i| ops[i].end().is_none_or(|e| e > t));
        let found = self
            .active
            .iter()
            .copied()
            .filter(|&i| ops[i].runs_at(t))
            .max_by_key(|&i| (ops[i].start, i));
        match found {
            Some(i) => {
                self.frames[i] += 1;
                i as i64
            }
            None => -1,
        }
    }

    /// The lines of meta/episodes.jsonl, one JSON object per episode.
    pub fn jsonl(&self) -> String {
        let mut s = String::new();
        for (i, op) in self.ops.iter().enumerate() {
            let v = serde_json::json!({
                "episode_index": i,
                "operation_id": op.operation_id,
                "operation_type": op.kind,
                "operation_status": op.status,
                "message": op.message,
                "stepper_indices": op.stepper_indices,
                "final_positions": op.final_positions,
                "state_id": op.state_id,
                "start": op.start.to_rfc3339(),
                "end": op.completed_at.map(|t| t.to_rfc3339()),
                "parent_episode_index": self.parents[i],
                "length": self.frames[i],
            });
            s.push_str(&v.to_string());
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    fn op(start: i64, end: Option<i64>, status: &str) -> Operation {
        Operation {
            operation_id: format!("op{start}"),
            state_id: None,
            start: t(start),
            completed_at: end.map(t),
            kind: "z_adjust".into(),
            status: status.into(),
            message: None,
            stepper_indices: vec![],
            final_positions: vec![],
        }
    }

    #[test]
    fn innermost_running_operation_and_parents() {
        // 0: 0..100, 1: 10..30 in 0, 2: 40..70 in 0, 3: 45..55 in 2,
        // 4: 200.. still running.
        let mut e = Episodes::new(vec![
            op(0, Some(100), "completed"),
            op(10, Some(30), "completed"),
            op(40, Some(70), "failed"),
            op(45, Some(55), "completed"),
            op(200, None, "started"),
        ]);
        assert_eq!(e.parents, [None, Some(0), Some(0), Some(2), None]);
        let got: Vec<i64> = [
            0, 5, 10, 29, 30, 44, 45, 54, 55, 69, 70, 99, 100, 150, 200, 5000,
        ]
        .iter()
        .map(|&s| e.at(t(s)))
        .collect();
        assert_eq!(got, [0, 0, 1, 1, 0, 2, 3, 3, 2, 2, 0, 0, -1, -1, 4, 4]);
    }

    #[test]
    fn a_finished_row_without_completed_at_covers_no_frame() {
        let mut e = Episodes::new(vec![op(10, None, "completed")]);
        assert_eq!(e.at(t(10)), -1);
        assert_eq!(e.at(t(11)), -1);
    }
}
