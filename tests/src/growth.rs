//! Growth curves of the benchmarks (`medallion-bench growth`): the exponent
//! of a measure between two sizes of the work, and when it is worse than
//! linear.

/// A growth exponent above this is reported as worse than linear (the
/// margin is for noise on a shared machine).
pub const WORSE_THAN_LINEAR: f64 = 1.15;

/// What [`verdict`] says of an exponent above [`WORSE_THAN_LINEAR`].
pub const WORSE: &str = "WORSE THAN LINEAR";

/// The growth exponent of a measure from `(n1, m1)` to `(n2, m2)`:
/// `ln(m2 / m1) / ln(n2 / n1)` — 0 constant, 1 linear, 2 quadratic. NaN
/// when the sizes do not grow or a measure is not positive.
pub fn exponent(n1: f64, m1: f64, n2: f64, m2: f64) -> f64 {
    if n1 <= 0.0 || n2 <= n1 || m1 <= 0.0 || m2 <= 0.0 {
        return f64::NAN;
    }
    (m2 / m1).ln() / (n2 / n1).ln()
}

/// `ok`, [`WORSE`], or `?` when the exponent is undefined.
pub fn verdict(e: f64) -> &'static str {
    if e.is_nan() {
        "?"
    } else if e > WORSE_THAN_LINEAR {
        WORSE
    } else {
        "ok"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponents_tell_constant_linear_and_quadratic_apart() {
        assert!(exponent(1e6, 10.0, 5e6, 10.0).abs() < 1e-9);
        assert!((exponent(1e6, 10.0, 5e6, 50.0) - 1.0).abs() < 1e-9);
        assert!((exponent(1e6, 10.0, 5e6, 250.0) - 2.0).abs() < 1e-9);
        assert_eq!(verdict(exponent(1e6, 10.0, 5e6, 10.0)), "ok");
        assert_eq!(verdict(exponent(1e6, 10.0, 5e6, 50.0)), "ok");
        assert_eq!(verdict(exponent(1e6, 10.0, 5e6, 70.0)), WORSE);
        assert_eq!(verdict(exponent(5e6, 1.0, 1e6, 2.0)), "?");
    }
}
