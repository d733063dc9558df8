use std::time::{Duration, SystemTime};

use http::HeaderMap;
use http::header::RETRY_AFTER;

/// Reads the `Retry-After` header of a response (RFC 9110 section 10.2.3)
/// as a delay from `now`.
///
/// Both forms are accepted: delta-seconds (`120`) and an HTTP-date
/// (`Fri, 04 Dec 2026 21:00:00 GMT`, and the two obsolete date forms). A
/// date in the past reads as zero. Returns `None` when the header is
/// missing, repeated with different values, or unparsable (a sign, a
/// fraction, spaces inside, an invalid date), so that garbage is ignored
/// rather than obeyed. The caller caps the delay: see
/// [`Backoff::delay_after`](super::Backoff::delay_after).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::HeaderMap;
/// use tower_courier::retry::retry_after;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("retry-after", "3".parse().unwrap());
/// assert_eq!(retry_after(&headers, SystemTime::now()), Some(Duration::from_secs(3)));
///
/// headers.insert("retry-after", "soon".parse().unwrap());
/// assert_eq!(retry_after(&headers, SystemTime::now()), None);
/// ```
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let mut values = headers.get_all(RETRY_AFTER).iter();
    let first = values.next()?;
    if values.any(|other| other != first) {
        return None;
    }

    let text = first.to_str().ok()?.trim();
    parse_delta_seconds(text).or_else(|| parse_http_date(text, now))
}

fn parse_delta_seconds(text: &str) -> Option<Duration> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }

    // A value too large for u64 is still a valid delay, only a long one;
    // the cap applies later.
    let seconds = text.parse::<u64>().unwrap_or(u64::MAX);
    Some(Duration::from_secs(seconds))
}

fn parse_http_date(text: &str, now: SystemTime) -> Option<Duration> {
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_with(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(RETRY_AFTER, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn delta_seconds() {
        let now = SystemTime::now();

        assert_eq!(
            retry_after(&headers_with(&["0"]), now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after(&headers_with(&["3600"]), now),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            retry_after(&headers_with(&["99999999999999999999999"]), now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn http_date_ahead_and_behind() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let ahead = httpdate::fmt_http_date(now + Duration::from_secs(3));
        let behind = httpdate::fmt_http_date(now - Duration::from_secs(3));

        assert_eq!(
            retry_after(&headers_with(&[&ahead]), now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(&headers_with(&[&behind]), now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn garbage_is_ignored() {
        let now = SystemTime::now();
        for value in [
            "",
            "-1",
            "+3",
            "1.5",
            "1e3",
            "3 s",
            "soon",
            "Fri, 99 Dec 2026",
        ] {
            assert_eq!(retry_after(&headers_with(&[value]), now), None, "{value:?}");
        }
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
        assert_eq!(retry_after(&headers_with(&["1", "2"]), now), None);
    }

    proptest::proptest! {
        #[test]
        fn only_seconds_or_dates_parse(text in "\\PC{0,40}") {
            let mut headers = HeaderMap::new();
            if let Ok(value) = text.parse() {
                headers.insert(RETRY_AFTER, value);
            }
            let parsed = retry_after(&headers, SystemTime::now());

            let trimmed = text.trim();
            let is_seconds = !trimmed.is_empty() && trimmed.bytes().all(|byte| byte.is_ascii_digit());
            let is_date = httpdate::parse_http_date(trimmed).is_ok();
            let expected = !headers.is_empty() && (is_seconds || is_date);
            proptest::prop_assert_eq!(parsed.is_some(), expected);
        }
    }
}
