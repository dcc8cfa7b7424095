//! Cron schedules as a CronJob's `spec.schedule` writes them: five fields (minute, hour,
//! day of month, month, day of week) or a macro (`@hourly`, `@daily`, ...), evaluated in
//! the CronJob's `spec.timeZone` (an IANA name) or UTC.
//!
//! Why a parser of our own: the Rust cron crates work over `chrono`, and the project's
//! time library is `jiff`, which already resolves IANA zones; the standard five-field
//! syntax is small. The rules are the standard ones Kubernetes follows: lists (`1,5`),
//! ranges (`1-5`), steps (`*/15`, `10-40/10`, `5/10` meaning `5-max/10`), names for months
//! and weekdays (`JAN`, `mon`), `7` as Sunday, `?` as `*` in the day fields, and the day
//! rule of cron: when both day fields are restricted a day matching either runs, when one
//! of them is `*` both must match. Error messages are worded as Kubernetes reports them.
//!
//! [`Schedule::next_after`] is pure (a schedule, a time, a zone); the CronJob controller
//! decides over it.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// Why a schedule does not parse (the message is the `Invalid value` detail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CronError(String);

/// A parsed schedule: the allowed values of each field as bit sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// The day-of-month or day-of-week field was `*` (or `?`): days must match both.
    any_day: bool,
}

struct Field {
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Field = Field {
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Field = Field {
    min: 0,
    max: 23,
    names: &[],
};
const DAY: Field = Field {
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Field = Field {
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const WEEKDAY: Field = Field {
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

fn err(msg: String) -> CronError {
    CronError(msg)
}

fn number(s: &str, field: &Field) -> Result<u32, CronError> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = field.names.iter().position(|n| *n == lower) {
        let i = u32::try_from(i).unwrap_or(0);
        return Ok(if field.min == 1 { i + 1 } else { i });
    }
    s.parse::<u32>().map_err(|_| {
        err(format!(
            "failed to parse int from {s}: strconv.Atoi: parsing {s:?}: invalid syntax"
        ))
    })
}

/// One comma-separated part of a field: `*`, `N`, `A-B`, each with an optional `/STEP`.
fn part(expr: &str, field: &Field, weekday: bool) -> Result<(u64, bool), CronError> {
    let (range, step) = match expr.split('/').collect::<Vec<_>>()[..] {
        [r] => (r, None),
        [r, s] => (r, Some(s)),
        _ => return Err(err(format!("too many slashes: {expr}"))),
    };
    let max = if weekday { 7 } else { field.max };
    let star = range == "*" || range == "?";
    let (start, end) = if star {
        (field.min, field.max)
    } else {
        match range.split('-').collect::<Vec<_>>()[..] {
            [a] => {
                let a = number(a, field)?;
                (a, if step.is_some() { max } else { a })
            }
            [a, b] => (number(a, field)?, number(b, field)?),
            _ => return Err(err(format!("too many hyphens: {expr}"))),
        }
    };
    let step = match step {
        None => 1,
        Some(s) => {
            let n = number(s, &MINUTE)?;
            if n == 0 {
                return Err(err(format!(
                    "step of range should be a positive number: {expr}"
                )));
            }
            n
        }
    };
    if start < field.min {
        return Err(err(format!(
            "beginning of range ({start}) below minimum ({}): {expr}",
            field.min
        )));
    }
    if end > max {
        return Err(err(format!(
            "end of range ({end}) above maximum ({max}): {expr}"
        )));
    }
    if start > end {
        return Err(err(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        )));
    }
    let mut bits = 0u64;
    let mut v = start;
    while v <= end {
        // Sunday is 0 and 7.
        let bit = if weekday && v == 7 { 0 } else { v };
        bits |= 1 << bit;
        v += step;
    }
    Ok((bits, star && step == 1))
}

fn field_bits(expr: &str, field: &Field, weekday: bool) -> Result<(u64, bool), CronError> {
    let mut bits = 0;
    let mut star = false;
    for p in expr.split(',') {
        let (b, s) = part(p, field, weekday)?;
        bits |= b;
        star |= s;
    }
    Ok((bits, star))
}

impl Schedule {
    /// Parses a five-field schedule or a macro.
    pub fn parse(spec: &str) -> Result<Schedule, CronError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(err("empty spec string".into()));
        }
        let expanded = if let Some(name) = spec.strip_prefix('@') {
            match name {
                "yearly" | "annually" => "0 0 1 1 *",
                "monthly" => "0 0 1 * *",
                "weekly" => "0 0 * * 0",
                "daily" | "midnight" => "0 0 * * *",
                "hourly" => "0 * * * *",
                _ => return Err(err(format!("unrecognized descriptor: {spec}"))),
            }
        } else {
            spec
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [min, hour, dom, month, dow] = fields[..] else {
            return Err(err(format!(
                "expected exactly 5 fields, found {}: [{}]",
                fields.len(),
                fields.join(" ")
            )));
        };
        let (minutes, _) = field_bits(min, &MINUTE, false)?;
        let (hours, _) = field_bits(hour, &HOUR, false)?;
        let (days, dom_star) = field_bits(dom, &DAY, false)?;
        let (months, _) = field_bits(month, &MONTH, false)?;
        let (weekdays, dow_star) = field_bits(dow, &WEEKDAY, true)?;
        Ok(Schedule {
            minutes,
            hours,
            days,
            months,
            weekdays,
            any_day: dom_star || dow_star,
        })
    }

    fn day_matches(&self, date: Date) -> bool {
        let dom = self.days & (1 << date.day()) != 0;
        let dow = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        if self.any_day { dom && dow } else { dom || dow }
    }

    /// The first scheduled time strictly after `after`, in `tz`; `None` when there is none
    /// within five years (`30 0 31 2 *`, the 31st of February).
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        // Wall-clock minutes in the zone, from the minute after `after`.
        let start = after.to_zoned(tz.clone()).datetime();
        let mut t = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        let limit = start.year() + 5;
        while t.year() <= limit {
            if self.months & (1 << t.month()) == 0 {
                let first = t.date().first_of_month().checked_add(1.month()).ok()?;
                t = first.to_datetime(Time::midnight());
                continue;
            }
            if !self.day_matches(t.date()) {
                t = t.date().tomorrow().ok()?.to_datetime(Time::midnight());
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = DateTime::from_parts(t.date(), Time::constant(t.hour(), 0, 0, 0))
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            // A wall time skipped by a DST change runs at the first instant after it;
            // one repeated runs once, at its first occurrence.
            let at = tz.to_ambiguous_timestamp(t).compatible().ok()?;
            if at > after {
                return Some(at);
            }
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }
}

/// Resolves a CronJob's `spec.timeZone` (UTC when unset).
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, CronError> {
    match name {
        None | Some("") => Ok(TimeZone::UTC),
        Some(n) if n.eq_ignore_ascii_case("local") => Err(err(
            "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones"
                .into(),
        )),
        Some(n) => TimeZone::get(n).map_err(|_| err(format!("unknown time zone {n}"))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(spec: &str, after: &str, tz: &str) -> String {
        let s = Schedule::parse(spec).unwrap();
        let tz = time_zone(Some(tz)).unwrap();
        s.next_after(at(after), &tz).unwrap().to_string()
    }

    #[test]
    fn fields_ranges_steps_and_names() {
        assert_eq!(
            next("*/15 * * * *", "2026-12-06T10:07:30Z", "UTC"),
            "2026-12-06T10:15:00Z"
        );
        assert_eq!(
            next("* * * * *", "2026-12-06T10:07:00Z", "UTC"),
            "2026-12-06T10:08:00Z"
        );
        assert_eq!(
            next("5 4 * * sun", "2026-12-06T10:07:00Z", "UTC"),
            "2026-12-13T04:05:00Z"
        );
        assert_eq!(
            next("0 9-17/4 * * MON-FRI", "2026-12-05T10:00:00Z", "UTC"),
            "2026-12-07T09:00:00Z"
        );
        assert_eq!(
            next("0 0 1 jan,jul *", "2026-12-06T00:00:00Z", "UTC"),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            next("0 0 * * 7", "2026-12-06T00:00:00Z", "UTC"),
            "2026-12-13T00:00:00Z"
        );
        assert_eq!(
            next("10/20 * * * *", "2026-12-06T00:31:00Z", "UTC"),
            "2026-12-06T00:50:00Z"
        );
    }

    #[test]
    fn both_day_fields_restricted_means_either() {
        // The 1st of the month or any Monday: Monday 7 Dec comes first.
        assert_eq!(
            next("0 0 1 * 1", "2026-12-06T00:00:00Z", "UTC"),
            "2026-12-07T00:00:00Z"
        );
        // With `*` in one day field, the other alone decides.
        assert_eq!(
            next("0 0 1 * *", "2026-12-06T00:00:00Z", "UTC"),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            Schedule::parse("30 0 31 2 *")
                .unwrap()
                .next_after(at("2026-01-01T00:00:00Z"), &TimeZone::UTC),
            None
        );
    }

    #[test]
    fn macros_and_time_zones() {
        assert_eq!(
            next("@hourly", "2026-12-06T10:07:00Z", "UTC"),
            "2026-12-06T11:00:00Z"
        );
        assert_eq!(
            next("@daily", "2026-12-06T10:07:00Z", "UTC"),
            "2026-12-07T00:00:00Z"
        );
        assert_eq!(
            next("@weekly", "2026-12-06T10:07:00Z", "UTC"),
            "2026-12-13T00:00:00Z"
        );
        assert_eq!(
            next("@yearly", "2026-12-06T10:07:00Z", "UTC"),
            "2027-01-01T00:00:00Z"
        );
        // Midnight in New York is 05:00 UTC in winter.
        assert_eq!(
            next("0 0 * * *", "2026-12-06T10:07:00Z", "America/New_York"),
            "2026-12-07T05:00:00Z"
        );
        // 02:30 does not exist on the spring-forward day: it runs at 03:00 local.
        assert_eq!(
            next("30 2 * * *", "2026-03-08T05:00:00Z", "America/New_York"),
            "2026-03-08T07:30:00Z"
        );
        assert_eq!(
            time_zone(Some("Mars/Olympus")).unwrap_err().to_string(),
            "unknown time zone Mars/Olympus"
        );
        assert!(time_zone(Some("Local")).is_err());
    }

    #[test]
    fn errors_are_worded_as_kubernetes_reports_them() {
        let e = |s: &str| Schedule::parse(s).unwrap_err().to_string();
        assert_eq!(e("* * *"), "expected exactly 5 fields, found 3: [* * *]");
        assert_eq!(e("61 * * * *"), "end of range (61) above maximum (59): 61");
        assert_eq!(
            e("0 0 0 * *"),
            "beginning of range (0) below minimum (1): 0"
        );
        assert_eq!(
            e("5-1 * * * *"),
            "beginning of range (5) beyond end of range (1): 5-1"
        );
        assert_eq!(
            e("x * * * *"),
            "failed to parse int from x: strconv.Atoi: parsing \"x\": invalid syntax"
        );
        assert_eq!(e("@often"), "unrecognized descriptor: @often");
        assert_eq!(
            e("*/0 * * * *"),
            "step of range should be a positive number: */0"
        );
    }
}
