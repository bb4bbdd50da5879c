//! `exp` and `nbf` judged against the caller's clock, not the system's, so
//! verification is a function of `now` (testable, and one clock per request).
use serde_json::Value;

use super::TokenRejection;

/// A NumericDate as jsonwebtoken reads it: a non-negative integer, or a
/// float rounded to one. `None` when present but not such a number.
fn numeric_date(value: &Value) -> Option<u64> {
    let number = value.as_number()?;
    if let Some(seconds) = number.as_u64() {
        return Some(seconds);
    }
    // Negative integers are not dates; floats are, within range.
    if !number.is_f64() {
        return None;
    }
    let seconds = number.as_f64()?;
    (seconds.is_finite() && seconds >= 0.0 && seconds < u64::MAX as f64)
        .then(|| seconds.round() as u64)
}

/// Checks `exp` and `nbf` at `now` (unix seconds), allowing `leeway`
/// seconds of skew. Presence of `exp` is not checked here: jsonwebtoken's
/// required-claims check has already refused tokens without one.
pub fn check(claims: &Value, now: i64, leeway: u64) -> Result<(), TokenRejection> {
    let exp = claims.get("exp").map(numeric_date);
    let nbf = claims.get("nbf").map(numeric_date);
    // An `nbf` that is not a date is malformed, as jsonwebtoken has it.
    if matches!(nbf, Some(None)) {
        return Err(TokenRejection::Malformed);
    }
    let (now, leeway) = (i128::from(now), i128::from(leeway));
    if let Some(Some(exp)) = exp {
        if i128::from(exp) + leeway < now {
            return Err(TokenRejection::Expired);
        }
    }
    if let Some(Some(nbf)) = nbf {
        if i128::from(nbf) > now + leeway {
            return Err(TokenRejection::NotYetValid);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn dates_are_read_as_jsonwebtoken_reads_them() {
        assert_eq!(numeric_date(&json!(100)), Some(100));
        assert_eq!(numeric_date(&json!(99.6)), Some(100));
        assert_eq!(numeric_date(&json!(-1)), None);
        assert_eq!(numeric_date(&json!(-0.5)), None);
        assert_eq!(numeric_date(&json!("100")), None);
        assert_eq!(numeric_date(&json!(null)), None);
    }

    #[test]
    fn exp_and_nbf_hold_to_the_edge_of_the_leeway() {
        let claims = json!({ "exp": 1_000, "nbf": 500 });
        assert_eq!(check(&claims, 1_030, 30), Ok(()));
        assert_eq!(check(&claims, 1_031, 30), Err(TokenRejection::Expired));
        assert_eq!(check(&claims, 470, 30), Ok(()));
        assert_eq!(check(&claims, 469, 30), Err(TokenRejection::NotYetValid));
    }

    #[test]
    fn an_nbf_that_is_not_a_date_is_malformed() {
        let claims = json!({ "exp": 1_000, "nbf": "soon" });
        assert_eq!(check(&claims, 0, 30), Err(TokenRejection::Malformed));
    }
}
