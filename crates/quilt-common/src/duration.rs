//! Durations on the command line: `500ms`, `3s`, `2m`, `1h`, or plain seconds (`30`).

use std::time::Duration;

/// Parses a duration flag value; the error names the value and the accepted forms.
pub fn parse(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().map_err(|_| {
        format!("duration {value:?} is not a number with a unit like 500ms, 3s, 2m or 1h")
    })?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => {
            return Err(format!(
                "duration {value:?} has unknown unit {unit:?} (use ms, s, m or h)"
            ));
        }
    };
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 86_400.0 * 365.0 {
        return Err(format!(
            "duration {value:?} must be above zero and at most a year"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_usual_forms() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
    }

    #[test]
    fn refuses_nonsense_naming_the_value() {
        for bad in ["", "fast", "3 weeks", "0s", "-1s", "10x"] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(&format!("{:?}", bad.trim())), "{err}");
        }
    }
}
