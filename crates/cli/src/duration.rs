//! Durations on the command line: `500ms`, `10s`, `2m`, `1h`, or combinations (`1m30s`).
//! A bare number keeps the unit the flag always had (seconds for `--timeout`, milliseconds
//! for `--*-ms`), so existing scripts keep working.

use std::time::Duration;

/// Parses `s`; a bare number is `bare_unit_ms` milliseconds each.
fn parse(s: &str, bare_unit_ms: u64) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration: use e.g. 500ms, 10s, 2m or 1h".into());
    }
    if s.starts_with('-') {
        return Err(format!("{s:?}: a duration cannot be negative"));
    }
    if let Ok(n) = s.parse::<u64>() {
        return n
            .checked_mul(bare_unit_ms)
            .map(Duration::from_millis)
            .ok_or_else(|| format!("{s:?}: too long"));
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "{s:?} is not a duration: use e.g. 500ms, 10s, 2m, 1h or 1m30s"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{s:?}: too long"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "" => {
                return Err(format!(
                    "{s:?}: a unit is missing after {n} (ms, s, m or h)"
                ))
            }
            u => return Err(format!("{s:?}: unknown unit {u:?} (use ms, s, m or h)")),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(unit_ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{s:?}: too long"))?;
    }
    Ok(Duration::from_millis(total))
}

/// A duration whose bare numbers are seconds.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    parse(s, 1000)
}

/// A duration whose bare numbers are milliseconds.
pub fn parse_ms(s: &str) -> Result<Duration, String> {
    parse(s, 1)
}

/// A clap value parser: whole seconds (rounded up), bare numbers being seconds.
pub fn secs_arg(s: &str) -> Result<u64, String> {
    let d = parse_secs(s)?;
    u64::try_from(d.as_millis().div_ceil(1000)).map_err(|_| format!("{s:?} is too long"))
}

/// A clap value parser: milliseconds, bare numbers being milliseconds.
pub fn ms_arg(s: &str) -> Result<u64, String> {
    u64::try_from(parse_ms(s)?.as_millis()).map_err(|_| format!("{s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(parse_secs("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_ms("10"), Ok(Duration::from_millis(10)));
        assert_eq!(parse_secs("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_ms("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_secs("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_secs("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_secs("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_secs(" 3s "), Ok(Duration::from_secs(3)));
        for bad in [
            "",
            "s",
            "10x",
            "-5",
            "-5s",
            "1.5s",
            "10 s",
            "ms10",
            "99999999999999999999",
        ] {
            assert!(parse_secs(bad).is_err(), "{bad:?} accepted");
        }
    }
}
