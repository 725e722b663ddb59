//! Schedule periods: `<number><unit>` with unit `s`, `m` or `h`, as the
//! legacy tool accepted (`24h`, `90m`, `1.5h`); `d` is accepted too.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// How often a periodic backup is due. Always at least one second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period(Duration);

/// The longest period accepted (10 years): beyond it a typo is likelier than intent.
pub const MAX_PERIOD: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

impl Period {
    /// A period of `duration`, rounded to whole milliseconds.
    ///
    /// # Errors
    /// When the duration is shorter than a second or longer than [`MAX_PERIOD`].
    pub fn new(duration: Duration) -> Result<Self> {
        if duration < Duration::from_secs(1) || duration > MAX_PERIOD {
            return Err(Error::invalid(
                "period",
                format!("period {duration:?} out of range: must be between 1s and 10 years"),
            ));
        }
        // To the nearest millisecond: a period given in float seconds
        // (`780.001s`) is a hair under its value (780.000999…), and
        // truncating it would make the text it prints read back shorter.
        let ms = (duration.as_nanos() + 500_000) / 1_000_000;
        Ok(Period(Duration::from_millis(ms as u64)))
    }

    /// A period from the legacy statefile's float seconds.
    ///
    /// # Errors
    /// When the value is not finite or out of range.
    pub fn from_secs_f64(secs: f64) -> Result<Self> {
        if !secs.is_finite() || secs < 0.0 {
            return Err(Error::invalid(
                "period",
                format!("invalid period {secs} seconds"),
            ));
        }
        Self::new(
            Duration::try_from_secs_f64(secs)
                .map_err(|_| Error::invalid("period", format!("invalid period {secs} seconds")))?,
        )
    }

    /// The duration.
    pub fn duration(self) -> Duration {
        self.0
    }
}

impl FromStr for Period {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::invalid(
                "period",
                format!("invalid period {input:?}: {why} (expected e.g. 24h, 90m, 1.5h, 30s)"),
            )
        };
        let s = input.trim();
        let unit_at = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| bad("missing unit"))?;
        let (number, unit) = s.split_at(unit_at);
        if number.is_empty() {
            return Err(bad("missing number"));
        }
        if number.len() > 20 {
            return Err(bad("number too long"));
        }
        let value: f64 = number.parse().map_err(|_| bad("not a number"))?;
        let scale = match unit {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(bad("unknown unit")),
        };
        let secs = value * scale;
        if !secs.is_finite() || secs < 1.0 || secs > MAX_PERIOD.as_secs_f64() {
            return Err(bad("must be between 1s and 10 years"));
        }
        Period::new(Duration::from_secs_f64(secs)).map_err(|_| bad("out of range"))
    }
}

impl fmt::Display for Period {
    /// The shortest exact form: `24h`, `90m`, `1.5h` prints as `90m`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            return write!(f, "{}s", self.0.as_secs_f64());
        }
        let secs = ms / 1000;
        if secs.is_multiple_of(86400) {
            write!(f, "{}d", secs / 86400)
        } else if secs.is_multiple_of(3600) {
            write!(f, "{}h", secs / 3600)
        } else if secs.is_multiple_of(60) {
            write!(f, "{}m", secs / 60)
        } else {
            write!(f, "{secs}s")
        }
    }
}

impl Serialize for Period {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table() {
        let cases = [
            ("24h", 86400.0),
            ("90m", 5400.0),
            ("1.5h", 5400.0),
            ("30s", 30.0),
            ("1d", 86400.0),
            (" 2h ", 7200.0),
            ("0.5m", 30.0),
        ];
        for (input, secs) in cases {
            let p: Period = input.parse().unwrap();
            assert_eq!(p.duration().as_secs_f64(), secs, "{input}");
        }
    }

    #[test]
    fn rejects_with_a_clear_message() {
        for bad in [
            "",
            "h",
            "24",
            "24x",
            "-1h",
            "0s",
            "0.1s",
            "1e3h",
            "1..5h",
            "99999999999h",
            "24 h",
        ] {
            let err = bad.parse::<Period>().unwrap_err().to_string();
            assert!(err.starts_with("invalid period"), "{bad}: {err}");
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn fractional_milliseconds_read_back_the_same() {
        // Regression: `780.0010133s` was kept as 780.001 s and printed so,
        // but `780.001s` read back as 780 s (truncated from 780.000999…).
        for input in ["780.0010133s", "1.001s", "780.001s"] {
            let p: Period = input.parse().unwrap();
            assert_eq!(p.to_string().parse::<Period>().unwrap(), p, "{input}");
        }
        assert_eq!(
            "780.0010133s".parse::<Period>().unwrap().to_string(),
            "780.001s"
        );
    }

    #[test]
    fn display_is_shortest() {
        assert_eq!("1.5h".parse::<Period>().unwrap().to_string(), "90m");
        assert_eq!("24h".parse::<Period>().unwrap().to_string(), "1d");
        assert_eq!("7200s".parse::<Period>().unwrap().to_string(), "2h");
        assert_eq!("61s".parse::<Period>().unwrap().to_string(), "61s");
    }

    /// Valid periods to damage, and what is near them.
    const SEEDS: [&str; 8] = ["24h", "90m", "1.5h", "30s", "1d", " 2h ", "0.5m", "87840h"];

    /// Parses `s` the ways capsule does (text, JSON); whatever is accepted
    /// prints as text that parses back to the same period.
    fn check(s: &str) -> std::result::Result<(), TestCaseError> {
        let _ = serde_json::from_value::<Period>(serde_json::Value::String(s.to_string()));
        if let Ok(p) = s.parse::<Period>() {
            prop_assert!(p.duration() >= Duration::from_secs(1) && p.duration() <= MAX_PERIOD);
            prop_assert_eq!(
                p.to_string().parse::<Period>().ok(),
                Some(p),
                "{:?} → {}",
                s,
                p
            );
        }
        Ok(())
    }

    proptest! {
        // PROPTEST_CASES=N for a longer hunt.
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(4000)
        ))]

        #[test]
        fn never_panics(s in ".{0,40}") {
            check(&s)?;
        }

        #[test]
        fn mutated_periods_never_panic(
            seed in any::<prop::sample::Index>(),
            edits in prop::collection::vec(any::<(u8, usize, u8)>(), 1..4),
            digits in "[0-9.]{0,24}",
        ) {
            let seed = seed.get(&SEEDS);
            let bytes = test_support::mutation::mutate(seed.as_bytes(), &edits);
            check(&String::from_utf8_lossy(&bytes))?;
            // Long and odd numbers before each unit.
            for unit in ["s", "m", "h", "d", "ms", ""] {
                check(&format!("{digits}{unit}"))?;
            }
        }

        #[test]
        fn fractional_seconds_round_trip(ms in 1000u64..10_000_000) {
            let p = Period::new(Duration::from_millis(ms)).unwrap();
            prop_assert_eq!(p.to_string().parse::<Period>().unwrap(), p);
        }

        #[test]
        fn legacy_float_seconds_never_panic(secs in any::<f64>()) {
            if let Ok(p) = Period::from_secs_f64(secs) {
                prop_assert!(p.duration() >= Duration::from_secs(1) && p.duration() <= MAX_PERIOD);
            }
        }

        #[test]
        fn display_round_trips(secs in 1u64..(10 * 365 * 86400)) {
            let p = Period::new(Duration::from_secs(secs)).unwrap();
            prop_assert_eq!(p.to_string().parse::<Period>().unwrap(), p);
        }

        #[test]
        fn units_scale(n in 1u32..80_000, unit in prop_oneof![Just(("s", 1u64)), Just(("m", 60)), Just(("h", 3600))]) {
            let p: Period = format!("{n}{}", unit.0).parse().unwrap();
            prop_assert_eq!(p.duration(), Duration::from_secs(n as u64 * unit.1));
        }
    }
}
