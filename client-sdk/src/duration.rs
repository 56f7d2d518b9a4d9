//! Durations as people type them on a command line: `30s`, `5m`, `1h`, `24h`,
//! `1h30m`, `7d`.

use std::time::Duration;

/// Why a duration could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationParseError {
    /// Nothing was given.
    #[error("empty duration; expected e.g. 30s, 5m, 1h")]
    Empty,
    /// A number without a unit, or text that is not `<number><unit>`.
    #[error("invalid duration {0:?}; expected a number and a unit (s, m, h, d), e.g. 30s, 5m, 1h")]
    Invalid(String),
    /// A unit other than `s`, `m`, `h`, `d`.
    #[error("unknown unit {unit:?} in duration {input:?}; use s, m, h or d")]
    UnknownUnit {
        /// The whole input.
        input: String,
        /// The unit found.
        unit: String,
    },
    /// More than `u64::MAX` seconds.
    #[error("duration {0:?} is too large")]
    TooLarge(String),
}

/// Parses one or more `<integer><unit>` parts (`s`, `m`, `h`, `d`) and adds
/// them up, so `90s`, `1m30s` and `1h` all work. A bare number is refused:
/// `60` could mean seconds or minutes, and guessing wrong is worse than
/// asking.
pub fn parse_duration(input: &str) -> Result<Duration, DurationParseError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationParseError::Empty);
    }
    let invalid = || DurationParseError::Invalid(input.to_owned());
    let too_large = || DurationParseError::TooLarge(input.to_owned());
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid());
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        if unit_len == 0 {
            return Err(invalid());
        }
        let (unit, after) = after.split_at(unit_len);
        let seconds_per_unit = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 60 * 60,
            "d" => 24 * 60 * 60,
            _ => {
                return Err(DurationParseError::UnknownUnit {
                    input: input.to_owned(),
                    unit: unit.to_owned(),
                });
            }
        };
        let n: u64 = number.parse().map_err(|_| too_large())?;
        let part = n.checked_mul(seconds_per_unit).ok_or_else(too_large)?;
        total = total.checked_add(part).ok_or_else(too_large)?;
        rest = after;
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration in the largest unit that divides it (`90s`, `5m`,
/// `24h`), the inverse of [`parse_duration`] for whole seconds.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        // Sub-second values only appear in programmatic use; keep them visible.
        return format!("{}ms", d.as_millis());
    }
    if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration(" 0s "), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_ambiguous_or_malformed_input() {
        assert_eq!(parse_duration(""), Err(DurationParseError::Empty));
        assert_eq!(parse_duration("60"), Err(DurationParseError::Invalid("60".into())));
        assert_eq!(parse_duration("m"), Err(DurationParseError::Invalid("m".into())));
        assert_eq!(parse_duration("-5m"), Err(DurationParseError::Invalid("-5m".into())));
        assert_eq!(parse_duration("1.5h"), Err(DurationParseError::Invalid("1.5h".into())));
        assert_eq!(
            parse_duration("5w"),
            Err(DurationParseError::UnknownUnit { input: "5w".into(), unit: "w".into() })
        );
        assert_eq!(
            parse_duration("99999999999999999999s"),
            Err(DurationParseError::TooLarge("99999999999999999999s".into()))
        );
        assert!(parse_duration("5m").is_ok());
        let msg = parse_duration("60").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("e.g. 30s"), "{msg}");
    }

    #[test]
    fn formats_in_the_largest_whole_unit() {
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_secs(86_400)), "24h");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }
}
