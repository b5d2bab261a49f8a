//! The value syntaxes of the file: durations (`250ms`, `30s`, `5m`, `1h`;
//! `"off"` where a limit can be switched off) and sizes (`4096`, `64KiB`,
//! `4MiB`), and the serde hooks the file's structs read them with.
//!
//! The hooks are for `Option` fields of a struct with `#[serde(default)]`: a
//! key that is absent is `None`, one that is present is parsed or an error.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The longest duration the file may give: 100 years. Every duration is
/// added to the current time somewhere (a lease's expiry, a deadline), and
/// past this a `Duration` can overflow an `Instant`, which panics.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses `250ms`, `30s`, `5m`, `1h` (also `1.5s`), up to [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{s:?} needs a unit: ms, s, m or h"))?;
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s"))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?}: use ms, s, m or h"
            ));
        }
    };
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!(
            "{s:?} is out of range: at most 100 years (876000h)"
        )),
    }
}

/// Parses bytes (`4096`) or a size with a unit (`64KiB`, `4MiB`, `1GiB`,
/// also `KB`, `MB`, `GB`).
pub(super) fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 4MiB"))?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?}: use B, KiB, MiB or GiB"
            ));
        }
    };
    value
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A duration: `"30s"`.
pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A duration or `"off"`: `Some(None)` is `"off"`.
pub(super) fn duration_or_off<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<Duration>>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim() == "off" {
        return Ok(Some(None));
    }
    parse_duration(&s)
        .map(|v| Some(Some(v)))
        .map_err(serde::de::Error::custom)
}

/// A size or `"auto"`: `Some(None)` is `"auto"`.
pub(super) fn size_or_auto<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<usize>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Text(s) if s.trim() == "auto" => Ok(Some(None)),
        Raw::Text(s) => parse_size(&s)
            .map(|v| Some(Some(v)))
            .map_err(serde::de::Error::custom),
        Raw::Bytes(v) => usize::try_from(v)
            .map(|v| Some(Some(v)))
            .map_err(|_| serde::de::Error::custom("size is too large")),
    }
}

/// A size: a number of bytes, or a string with a unit.
pub(super) fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = usize;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a size like 4096 or \"4MiB\"")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<usize, E> {
            usize::try_from(v).map_err(|_| E::custom("size must not be negative"))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<usize, E> {
            usize::try_from(v).map_err(|_| E::custom("size is too large"))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<usize, E> {
            parse_size(v).map_err(E::custom)
        }
    }
    d.deserialize_any(V).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5d").is_err());
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("12").unwrap(), 12);
        assert!(parse_size("1TiB").is_err());
    }

    /// Found by the registry's fuzz target (`any_open_request_is_answered`):
    /// `lease = max_lease = "3000000000000000h"` was accepted, and the
    /// first open panicked adding the lease to the current time.
    #[test]
    fn regression_durations_past_100_years_are_refused() {
        assert_eq!(parse_duration("876000h").unwrap(), MAX_DURATION);
        for huge in ["876001h", "3000000000000000h", "99999999999999999999s"] {
            let e = parse_duration(huge).unwrap_err();
            assert!(e.contains("out of range"), "{huge}: {e}");
        }
        let e = super::super::Config::parse(
            "[sessions]\nlease = \"3000000000000000h\"\nmax_lease = \"3000000000000000h\"\n",
            std::path::Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("lease") && e.contains("out of range"), "{e}");
    }
}
