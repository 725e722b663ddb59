//! Writing results: stdout for results (text or JSON), stderr for notes;
//! every line passes through the run's redactor. Also the human formats of
//! sizes, dates, ages and durations.

use std::io::Write;

use chrono::{DateTime, Local, Offset, TimeZone, Utc};
use console::Style;

use crate::logging::redact;

/// Prints `text` and a newline on stdout, secrets redacted.
///
/// # Errors
/// When stdout is closed (a closed pipe is not an error worth a message:
/// the caller may ignore it).
pub fn out(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", redact(text))?;
    stdout.flush()
}

/// Prints `text` and a newline on stderr, secrets redacted.
pub fn note(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{}", redact(text));
}

/// Prints `value` as pretty JSON on stdout.
///
/// # Errors
/// As [`out`].
pub fn json(value: &serde_json::Value) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    out(&text)
}

/// The style of a status on stdout (or on stderr with `stderr`): green
/// finished, red failed and unreadable, yellow in progress.
pub fn status_style(status: &str, stderr: bool) -> Style {
    let style = Style::new();
    let style = if stderr {
        style.for_stderr()
    } else {
        style.for_stdout()
    };
    match status {
        "finished" => style.green(),
        "failed" | "unreadable" => style.red(),
        "requested" | "running" => style.yellow(),
        "deleting" => style.magenta(),
        _ => style,
    }
}

/// Bytes in binary units: `512 B`, `1.8 MiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A date in the machine's time zone, which it names: `2021-06-10 12:15
/// UTC`, `2021-06-10 14:15 +02:00` (an operator comparing it with a log
/// or another machine's output must know which clock it is).
pub fn date(at: DateTime<Utc>) -> String {
    zoned(at.with_timezone(&Local))
}

fn zoned<Tz: TimeZone>(at: DateTime<Tz>) -> String
where
    Tz::Offset: std::fmt::Display,
{
    if at.offset().fix().local_minus_utc() == 0 {
        at.format("%Y-%m-%d %H:%M UTC").to_string()
    } else {
        at.format("%Y-%m-%d %H:%M %:z").to_string()
    }
}

/// How long before `now`: `just now`, `5m ago`, `3h ago`, `3d ago`, `2y ago`.
pub fn age(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - at).num_seconds();
    if secs < 0 {
        return "in the future".into();
    }
    match secs {
        0..60 => "just now".into(),
        60..3_600 => format!("{}m ago", secs / 60),
        3_600..86_400 => format!("{}h ago", secs / 3_600),
        86_400..31_536_000 => format!("{}d ago", secs / 86_400),
        _ => format!("{}y ago", secs / 31_536_000),
    }
}

/// A duration: `850ms`, `42s`, `3m 20s`, `2h 05m`.
pub fn duration(d: chrono::Duration) -> String {
    let ms = d.num_milliseconds().max(0);
    let secs = ms / 1000;
    match secs {
        0 => format!("{ms}ms"),
        1..60 => format!("{secs}s"),
        60..3_600 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format!("{}h {:02}m", secs / 3_600, (secs % 3_600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_human() {
        for (bytes, want) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1_855_488, "1.8 MiB"),
            (5 * 1024 * 1024 * 1024, "5.0 GiB"),
        ] {
            assert_eq!(size(bytes), want);
        }
    }

    #[test]
    fn ages_are_short() {
        let now = Utc::now();
        let ago = |s: i64| age(now - chrono::Duration::seconds(s), now);
        assert_eq!(ago(5), "just now");
        assert_eq!(ago(300), "5m ago");
        assert_eq!(ago(3 * 3600), "3h ago");
        assert_eq!(ago(3 * 86_400 + 5), "3d ago");
        assert_eq!(ago(800 * 86_400), "2y ago");
        assert_eq!(ago(-100), "in the future");
    }

    #[test]
    fn durations_are_short() {
        let d = chrono::Duration::milliseconds;
        assert_eq!(duration(d(850)), "850ms");
        assert_eq!(duration(d(42_000)), "42s");
        assert_eq!(duration(d(200_000)), "3m 20s");
        assert_eq!(duration(d(7_500_000)), "2h 05m");
    }

    #[test]
    fn dates_name_their_zone() {
        let at = Utc.with_ymd_and_hms(2021, 6, 10, 12, 15, 42).unwrap();
        assert_eq!(zoned(at), "2021-06-10 12:15 UTC");
        let paris = chrono::FixedOffset::east_opt(2 * 3600).unwrap();
        assert_eq!(zoned(at.with_timezone(&paris)), "2021-06-10 14:15 +02:00");
        let west = chrono::FixedOffset::west_opt(5 * 3600 + 1800).unwrap();
        assert_eq!(zoned(at.with_timezone(&west)), "2021-06-10 06:45 -05:30");
        assert!(date(at).starts_with("2021-06-1"));
    }
}
