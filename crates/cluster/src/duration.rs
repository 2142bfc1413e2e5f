//! Go durations (`24h`, `1h30m`, `1.5s`, `300µs`), parsed exactly as Go's
//! `time.ParseDuration` parses them, because kubeadm reads `bootstrapToken.ttl` and the
//! validity periods with it.
//!
//! The rule is Go's `ParseDuration` in `src/time/format.go` (Go 1.22 and later, unchanged
//! since): `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+`, or `0` alone (with an optional sign). Each
//! number needs a digit before or after its point (`.5s` and `1.s` are valid, `.s` is
//! not); units are `ns`, `us`, `µs` (U+00B5), `μs` (U+03BC), `ms`, `s`, `m`, `h`; the
//! total must fit an `int64` of nanoseconds, -2⁶³ included; fraction digits past what a
//! `u64` holds are dropped, and a fraction is scaled through `f64` as Go does.
//!
//! It works on bytes and never panics, whatever the input (the `go-parse-duration` crate
//! it replaces panicked on a non-ASCII unit such as `µs`).

use std::fmt;

/// Why a text is not a Go duration; the messages are Go's own (`time: ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    /// Empty, no digits, a sign alone, or a total outside `int64` nanoseconds.
    Invalid(String),
    /// A number without a unit (`1`, `1h30`).
    MissingUnit(String),
    /// A unit Go does not know (`1x`, `1µ`, `1d`).
    UnknownUnit {
        /// The unit as written.
        unit: String,
        /// The whole text.
        text: String,
    },
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurationError::Invalid(text) => write!(f, "time: invalid duration {text:?}"),
            DurationError::MissingUnit(text) => write!(f, "time: missing unit in duration {text:?}"),
            DurationError::UnknownUnit { unit, text } => write!(f, "time: unknown unit {unit:?} in duration {text:?}"),
        }
    }
}

impl std::error::Error for DurationError {}

const MAX: u64 = 1 << 63;

/// Nanoseconds per unit, as Go's `unitMap`.
fn unit_nanos(unit: &[u8]) -> Option<u64> {
    Some(match unit {
        b"ns" => 1,
        // us, µs (U+00B5 micro sign), μs (U+03BC Greek mu)
        b"us" | b"\xc2\xb5s" | b"\xce\xbcs" => 1_000,
        b"ms" => 1_000_000,
        b"s" => 1_000_000_000,
        b"m" => 60 * 1_000_000_000,
        b"h" => 3600 * 1_000_000_000,
        _ => return None,
    })
}

/// Go's `leadingInt`: the leading `[0-9]*` and the rest; `None` on overflow past 2⁶³.
fn leading_int(s: &[u8]) -> Option<(u64, &[u8])> {
    let mut x: u64 = 0;
    let mut i = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        if x > MAX / 10 {
            return None;
        }
        x = x * 10 + u64::from(s[i] - b'0');
        if x > MAX {
            return None;
        }
        i += 1;
    }
    Some((x, &s[i..]))
}

/// Go's `leadingFraction`: the leading `[0-9]*` as `(digits, 10^count)`, which stops
/// gaining precision instead of overflowing.
fn leading_fraction(s: &[u8]) -> (u64, f64, &[u8]) {
    let mut x: u64 = 0;
    let mut scale = 1.0_f64;
    let mut overflow = false;
    let mut i = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        if !overflow {
            if x > (MAX - 1) / 10 {
                overflow = true;
            } else {
                let y = x * 10 + u64::from(s[i] - b'0');
                if y > MAX {
                    overflow = true;
                } else {
                    x = y;
                    scale *= 10.0;
                }
            }
        }
        i += 1;
    }
    (x, scale, &s[i..])
}

/// Parses `text` as Go's `time.ParseDuration` does, into nanoseconds (negative for a
/// leading `-`).
///
/// # Errors
///
/// [`DurationError`] for exactly the texts Go rejects, with Go's message.
pub fn parse_go_duration_nanos(text: &str) -> Result<i64, DurationError> {
    let invalid = || DurationError::Invalid(text.to_owned());
    let mut s = text.as_bytes();
    let mut neg = false;
    if let Some(&c @ (b'-' | b'+')) = s.first() {
        neg = c == b'-';
        s = &s[1..];
    }
    if s == b"0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        if !(s[0] == b'.' || s[0].is_ascii_digit()) {
            return Err(invalid());
        }
        let before = s.len();
        let (mut v, rest) = leading_int(s).ok_or_else(invalid)?;
        s = rest;
        let pre = before != s.len();
        let (mut f, mut scale, mut post) = (0, 1.0, false);
        if let Some((b'.', rest)) = s.split_first() {
            let before = rest.len();
            (f, scale, s) = leading_fraction(rest);
            post = before != s.len();
        }
        if !pre && !post {
            return Err(invalid());
        }
        let end = s.iter().position(|&c| c == b'.' || c.is_ascii_digit()).unwrap_or(s.len());
        if end == 0 {
            return Err(DurationError::MissingUnit(text.to_owned()));
        }
        let (unit_text, rest) = s.split_at(end);
        s = rest;
        let unit = unit_nanos(unit_text).ok_or_else(|| DurationError::UnknownUnit {
            unit: String::from_utf8_lossy(unit_text).into_owned(),
            text: text.to_owned(),
        })?;
        if v > MAX / unit {
            return Err(invalid());
        }
        v *= unit;
        if f > 0 {
            // As Go: f64 keeps fractions of an hour nanosecond-accurate; the cast saturates.
            v = v.checked_add((f as f64 * (unit as f64 / scale)) as u64).ok_or_else(invalid)?;
            if v > MAX {
                return Err(invalid());
            }
        }
        total = total.checked_add(v).filter(|&t| t <= MAX).ok_or_else(invalid)?;
    }
    if neg {
        // total <= 2^63, so -total fits i64.
        Ok(0_i64.wrapping_sub_unsigned(total))
    } else {
        i64::try_from(total).map_err(|_| invalid())
    }
}

/// Parses a Go duration that must not be negative into a [`std::time::Duration`].
///
/// # Errors
///
/// [`DurationError`] as [`parse_go_duration_nanos`]; a negative duration is
/// [`DurationError::Invalid`] too.
pub fn parse_go_duration(text: &str) -> Result<std::time::Duration, DurationError> {
    let nanos = parse_go_duration_nanos(text)?;
    u64::try_from(nanos).map(std::time::Duration::from_nanos).map_err(|_| DurationError::Invalid(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> i64 {
        parse_go_duration_nanos(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    #[test]
    fn every_unit() {
        assert_eq!(ok("1ns"), 1);
        assert_eq!(ok("1us"), 1_000);
        assert_eq!(ok("1µs"), 1_000, "U+00B5 micro sign");
        assert_eq!(ok("1μs"), 1_000, "U+03BC Greek mu");
        assert_eq!(ok("1ms"), 1_000_000);
        assert_eq!(ok("1s"), 1_000_000_000);
        assert_eq!(ok("1m"), 60_000_000_000);
        assert_eq!(ok("1h"), 3_600_000_000_000);
        assert_eq!(ok("8760h"), 8760 * 3_600_000_000_000);
    }

    #[test]
    fn sequences_fractions_and_signs() {
        assert_eq!(ok("1h30m"), 5_400_000_000_000);
        assert_eq!(ok("2h45m10.5s"), (2 * 3600 + 45 * 60) * 1_000_000_000 + 10_500_000_000);
        assert_eq!(ok("1.5h"), 5_400_000_000_000);
        assert_eq!(ok(".5s"), 500_000_000);
        assert_eq!(ok("1.s"), 1_000_000_000);
        // From Go's own table (src/time/time_test.go, parseDurationTests).
        assert_eq!(ok("0.3333333333333333333h"), 20 * 60 * 1_000_000_000);
        assert_eq!(ok("0.100000000000000000000h"), 6 * 60 * 1_000_000_000, "fraction digits past u64 are dropped");
        assert_eq!(ok("0.830103483285477580700h"), (49 * 60 + 48) * 1_000_000_000 + 372_539_827);
        assert_eq!(ok("9223372036854775.807us"), i64::MAX);
        assert_eq!(ok("9223372036.854775807s"), i64::MAX);
        assert_eq!(ok("-1.5h"), -5_400_000_000_000);
        assert_eq!(ok("+90m"), 5_400_000_000_000);
        assert_eq!(ok("1m1m"), 120_000_000_000, "Go adds repeated units");
        assert_eq!(ok("0"), 0);
        assert_eq!(ok("-0"), 0);
        assert_eq!(ok("+0"), 0);
        assert_eq!(ok("0s"), 0);
    }

    #[test]
    fn int64_limits() {
        assert_eq!(ok("9223372036854775807ns"), i64::MAX);
        assert_eq!(ok("-9223372036854775808ns"), i64::MIN);
        assert_eq!(ok("2562047h47m16.854775807s"), i64::MAX);
        for text in [
            "9223372036854775808ns",
            "9223372036854775807ns1ns",
            "2562048h",
            "-9223372036854775809ns",
            "99999999999999999999s",
            "2562047h47m16.854775808s",
            "9223372036854775.808us",
            "9223372036854.775808ms",
            "3000000h",
        ] {
            assert_eq!(parse_go_duration_nanos(text), Err(DurationError::Invalid(text.into())), "{text}");
        }
    }

    #[test]
    fn what_go_rejects() {
        for text in ["", "-", "+", ".s", "-.s", "s", "h1", "1h ", " 1h", "1_000s", "00"] {
            assert!(parse_go_duration_nanos(text).is_err(), "{text:?} parsed");
        }
        assert_eq!(parse_go_duration_nanos("1"), Err(DurationError::MissingUnit("1".into())));
        assert_eq!(parse_go_duration_nanos("1h30"), Err(DurationError::MissingUnit("1h30".into())));
        for (text, unit) in [("1x", "x"), ("1µ", "µ"), ("1d", "d"), ("1H", "H"), ("1sec", "sec"), ("5小时", "小时")]
        {
            assert_eq!(
                parse_go_duration_nanos(text),
                Err(DurationError::UnknownUnit { unit: unit.into(), text: text.into() }),
                "{text}"
            );
        }
        assert_eq!(
            parse_go_duration_nanos("1x").unwrap_err().to_string(),
            r#"time: unknown unit "x" in duration "1x""#
        );
    }

    #[test]
    fn non_ascii_garbage_is_an_error_not_a_panic() {
        for text in ["µ", "µs", "1µ̈s", "1\u{0}s", "1\u{FFFD}", "🦀", "1🦀2s", "1s\u{202E}", "1\u{00B5}\u{03BC}s", "١s"]
        {
            assert!(parse_go_duration_nanos(text).is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn negative_is_refused_as_a_std_duration() {
        assert_eq!(parse_go_duration("90m"), Ok(std::time::Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("-1s"), Err(DurationError::Invalid("-1s".into())));
    }
}
