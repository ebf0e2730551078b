//! Whether a measure sampled at a fixed period stayed flat: the verdict of
//! `medallion-bench soak` on memory, kept here so its rule has tests.
//!
//! A memory series **creeps** when either:
//! - the median of its last third is more than 10% above the median of its
//!   middle third (the level moved), or
//! - the Theil–Sen slope of its last two thirds exceeds a tenth of the last
//!   third's median per hour (a steady rise).
//!
//! Why these and not a least-squares slope of the last third (the rule
//! until 2026-12-05, still printed by the soak): `optimize` runs every
//! minute and its compaction lifts memory for a few samples; vacuum first
//! deletes files at minute 60. A least-squares line over 40 minutes is
//! pulled by where in the window such spikes fall, so a level series could
//! fail (the 125-minute run of 2026-12-05: heap medians by third 49.0 /
//! 48.7 / 43.2 MiB, least-squares slope +11 MiB/h). A leak is a rise of
//! the level that persists: medians and the median of pairwise slopes
//! measure that and ignore spikes. The rule was set before the run it
//! judges, not fitted to it.

/// Samples of one measure taken every `period_s` seconds.
#[derive(Debug, Clone)]
pub struct Samples {
    period_s: f64,
    values: Vec<f64>,
}

impl Samples {
    /// Samples taken every `period_s` seconds.
    pub fn new(period_s: f64, values: Vec<f64>) -> Samples {
        Samples { period_s, values }
    }

    pub fn push(&mut self, value: f64) {
        self.values.push(value);
    }

    pub fn values(&self) -> &[f64] {
        &self.values
    }

    fn per_hour(&self) -> f64 {
        3600.0 / self.period_s
    }

    fn third(&self, i: usize) -> &[f64] {
        let n = self.values.len();
        &self.values[i * n / 3..(i + 1) * n / 3]
    }

    /// Means of the middle and the last third.
    pub fn third_means(&self) -> (f64, f64) {
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
        (
            mean(self.third(1)),
            mean(&self.values[2 * self.values.len() / 3..]),
        )
    }

    /// The median of each third: the level, untouched by spikes.
    pub fn third_medians(&self) -> [f64; 3] {
        [0, 1, 2].map(|i| median(self.third(i).to_vec()))
    }

    /// Least-squares slope of the last third, per hour (the former rule).
    pub fn last_third_slope_per_hour(&self) -> f64 {
        let tail = &self.values[2 * self.values.len() / 3..];
        let n = tail.len() as f64;
        if n < 2.0 {
            return 0.0;
        }
        let mx = (n - 1.0) / 2.0;
        let my = tail.iter().sum::<f64>() / n;
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for (i, y) in tail.iter().enumerate() {
            let dx = i as f64 - mx;
            sxy += dx * (y - my);
            sxx += dx * dx;
        }
        sxy / sxx * self.per_hour()
    }

    /// Theil–Sen slope of the last `fraction` of the samples, per hour: the
    /// median of the slopes between every two samples, so a spike does not
    /// pass for a rise.
    pub fn robust_slope_per_hour(&self, fraction: f64) -> f64 {
        let start = ((1.0 - fraction) * self.values.len() as f64) as usize;
        let tail = &self.values[start.min(self.values.len())..];
        let mut slopes = Vec::with_capacity(tail.len() * tail.len() / 2);
        for (i, a) in tail.iter().enumerate() {
            for (j, b) in tail.iter().enumerate().skip(i + 1) {
                slopes.push((b - a) / (j - i) as f64 * self.per_hour());
            }
        }
        median(slopes)
    }

    /// The rule of the module doc.
    pub fn creeps(&self) -> bool {
        let [_, middle, last] = self.third_medians();
        let level = last.max(1.0);
        last > 1.10 * middle.max(1.0) || self.robust_slope_per_hour(2.0 / 3.0) > 0.10 * level
    }
}

/// The median of `values` (0 when empty).
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two hours at 10 s: `f(minute)` per sample.
    fn two_hours(f: impl Fn(f64) -> f64) -> Samples {
        Samples::new(10.0, (0..720).map(|i| f(i as f64 / 6.0)).collect())
    }

    #[test]
    fn a_level_with_compaction_spikes_at_the_end_is_flat() {
        // 48 MiB, +30 MiB for two samples every minute, and a burst of
        // spikes in the last ten minutes.
        let s = Samples::new(
            10.0,
            (0..720)
                .map(|i| {
                    let spike = i % 6 < 2 || (i > 660 && i % 6 < 4);
                    48.0 + if spike { 30.0 } else { 0.0 }
                })
                .collect(),
        );
        assert!(!s.creeps(), "{:?}", s.third_medians());
        // The former rule calls this level a rise.
        assert!(s.last_third_slope_per_hour() > 0.10 * 48.0);
    }

    #[test]
    fn a_steady_leak_creeps() {
        // 6 MiB an hour on 48 MiB: an eighth of the level.
        let s = two_hours(|m| 48.0 + m / 10.0);
        assert!(s.creeps());
        assert!((s.robust_slope_per_hour(2.0 / 3.0) - 6.0).abs() < 0.01);
    }

    #[test]
    fn a_leak_hidden_in_noise_creeps() {
        let s = two_hours(|m| 48.0 + m / 8.0 + if (m * 6.0) as i64 % 7 == 0 { 25.0 } else { 0.0 });
        assert!(s.creeps());
    }

    #[test]
    fn a_step_up_of_the_level_creeps() {
        // Flat, then 20% higher from minute 85 on.
        let s = two_hours(|m| if m < 85.0 { 100.0 } else { 120.0 });
        assert!(s.creeps());
    }

    #[test]
    fn a_falling_level_does_not_creep() {
        let s = two_hours(|m| 240.0 - m / 20.0);
        assert!(!s.creeps());
        assert!(s.robust_slope_per_hour(2.0 / 3.0) < 0.0);
    }

    #[test]
    fn the_medians_of_thirds_and_the_least_squares_slope() {
        let s = Samples::new(10.0, (0..9).map(f64::from).collect());
        assert_eq!(s.third_medians(), [1.0, 4.0, 7.0]);
        assert!((s.last_third_slope_per_hour() - 360.0).abs() < 1e-9);
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![3.0, 1.0]), 2.0);
    }
}
