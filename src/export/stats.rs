//! meta/stats.json: min, max, mean and standard deviation of every numeric
//! feature, per element (as LeRobot gives them), computed as the frames go
//! by with Welford's update, so that nothing is kept but the running sums.

use serde_json::{json, Map, Value};

use super::features::{Batch, Feature};

/// Running statistics of one element.
#[derive(Debug, Clone, Copy)]
struct Running {
    n: u64,
    min: f64,
    max: f64,
    mean: f64,
    m2: f64,
}

impl Running {
    const EMPTY: Running = Running {
        n: 0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        mean: 0.0,
        m2: 0.0,
    };

    fn add(&mut self, x: f64) {
        // NaN (an age that did not fit) would poison every figure.
        if x.is_nan() {
            return;
        }
        self.n += 1;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }

    /// Population standard deviation.
    fn std(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            (self.m2 / self.n as f64).sqrt()
        }
    }
}

/// The statistics of an export.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Per feature: its name, shape and per-element running figures
    /// (`None` for text).
    per_feature: Vec<(String, Vec<usize>, Option<Vec<Running>>)>,
    frames: u64,
}

impl Stats {
    /// Empty statistics of `features`.
    pub fn new(features: &[Feature]) -> Stats {
        Stats {
            per_feature: features
                .iter()
                .map(|f| {
                    let running = f.dtype.numeric().then(|| vec![Running::EMPTY; f.width()]);
                    (f.name.clone(), f.shape.clone(), running)
                })
                .collect(),
            frames: 0,
        }
    }

    /// Adds the frames of `batch`.
    pub fn add(&mut self, batch: &Batch) {
        for ((_, _, running), data) in self.per_feature.iter_mut().zip(&batch.columns) {
            let Some(running) = running else { continue };
            let w = running.len();
            if w == 0 {
                continue;
            }
            for i in 0..data.len() {
                if let Some(x) = data.number(i) {
                    running[i % w].add(x);
                }
            }
        }
        self.frames += batch.rows as u64;
    }

    /// meta/stats.json: `{feature: {min, max, mean, std, count}}`, each
    /// figure shaped like the feature (a number for a scalar); figures of an
    /// empty export are null.
    pub fn json(&self) -> Value {
        let mut out = Map::new();
        for (name, shape, running) in &self.per_feature {
            let Some(running) = running else { continue };
            let figure = |get: &dyn Fn(&Running) -> f64| -> Value {
                let flat: Vec<Value> = running
                    .iter()
                    .map(|r| if r.n == 0 { Value::Null } else { json!(get(r)) })
                    .collect();
                shaped(&flat, shape)
            };
            out.insert(
                name.clone(),
                json!({
                    "min": figure(&|r| r.min),
                    "max": figure(&|r| r.max),
                    "mean": figure(&|r| r.mean),
                    "std": figure(&|r| r.std()),
                    "count": self.frames,
                }),
            );
        }
        Value::Object(out)
    }
}

/// `flat` (row-major) nested as `shape`; a scalar for an empty shape.
fn shaped(flat: &[Value], shape: &[usize]) -> Value {
    match shape {
        [] => flat.first().cloned().unwrap_or(Value::Null),
        [_] => Value::Array(flat.to_vec()),
        [_, rest @ ..] => {
            let inner: usize = rest.iter().product();
            if inner == 0 {
                return Value::Array(Vec::new());
            }
            Value::Array(flat.chunks(inner).map(|c| shaped(c, rest)).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn welford_matches_the_two_pass_figures() {
        let xs = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        let mut r = Running::EMPTY;
        xs.iter().for_each(|x| r.add(*x));
        assert_eq!((r.min, r.max, r.mean), (2.0, 9.0, 5.0));
        assert!((r.std() - 2.0).abs() < 1e-12);
    }

    #[test]
    fn figures_take_the_feature_shape() {
        let flat: Vec<Value> = (0..6).map(|i| json!(i)).collect();
        assert_eq!(shaped(&flat, &[2, 3]), json!([[0, 1, 2], [3, 4, 5]]));
        assert_eq!(shaped(&flat[..1], &[]), json!(0));
    }
}
