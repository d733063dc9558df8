//! Parsing of the `Idempotency-Key` header field.

use std::fmt;

use http::HeaderMap;
use http::header::HeaderName;

/// The `Idempotency-Key` request header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The maximum key length, in characters, after unquoting.
pub const MAX_KEY_LEN: usize = 255;

/// The reason an `Idempotency-Key` header was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyError {
    /// More than one `Idempotency-Key` field was sent.
    Repeated,
    /// The value is empty, too long, badly quoted or has other characters.
    Invalid,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Repeated => f.write_str("more than one Idempotency-Key field was sent"),
            Self::Invalid => f.write_str(
                "invalid Idempotency-Key: expected 1 to 255 characters from 0x21-0x7E, \
                 bare or as a quoted string",
            ),
        }
    }
}

/// Returns the unquoted key of the request, `Ok(None)` when no field was
/// sent.
pub(crate) fn key_from_headers(headers: &HeaderMap) -> Result<Option<String>, KeyError> {
    let mut fields = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(first) = fields.next() else {
        return Ok(None);
    };
    if fields.next().is_some() {
        return Err(KeyError::Repeated);
    }

    parse_key(first.as_bytes()).map(Some)
}

/// Parses one field value: a structured-field string (RFC 8941 section
/// 3.3.3) or a bare value that does not start with `"`. Both forms of the
/// same characters give the same key.
pub(crate) fn parse_key(value: &[u8]) -> Result<String, KeyError> {
    let value = value.trim_ascii();
    let key = match value.first() {
        Some(b'"') => unquote(&value[1..])?,
        _ => value.to_vec(),
    };

    let valid_chars = key.iter().all(|byte| (0x21..=0x7e).contains(byte));
    if key.is_empty() || key.len() > MAX_KEY_LEN || !valid_chars {
        return Err(KeyError::Invalid);
    }

    // Every byte is printable ASCII, checked above.
    String::from_utf8(key).map_err(|_| KeyError::Invalid)
}

/// Unquotes the rest of a structured-field string after its opening `"`.
/// Only `\"` and `\\` are valid escapes, and nothing may follow the closing
/// quote.
fn unquote(rest: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut key = Vec::with_capacity(rest.len());
    let mut bytes = rest.iter();

    while let Some(&byte) = bytes.next() {
        match byte {
            b'\\' => match bytes.next() {
                Some(&escaped @ (b'"' | b'\\')) => key.push(escaped),
                _ => return Err(KeyError::Invalid),
            },
            b'"' if bytes.as_slice().is_empty() => return Ok(key),
            b'"' => return Err(KeyError::Invalid),
            other => key.push(other),
        }
    }

    // The closing quote is missing.
    Err(KeyError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn bare_and_quoted_forms_are_equal() {
        assert_eq!(parse_key(b"8e03-abc").unwrap(), "8e03-abc");
        assert_eq!(parse_key(br#""8e03-abc""#).unwrap(), "8e03-abc");
    }

    #[test]
    fn quoted_escapes_are_unescaped() {
        assert_eq!(parse_key(br#""a\"b\\c""#).unwrap(), r#"a"b\c"#);
    }

    #[test]
    fn invalid_values_are_rejected() {
        let cases: [&[u8]; 10] = [
            b"",
            b"\"\"",
            b"has space",
            b"\"has space\"",
            b"\"unterminated",
            b"\"a\"b",
            b"\"bad\\escape\"",
            b"caf\xe9",
            b"tab\there",
            b"\x7f",
        ];
        for case in cases {
            assert_eq!(parse_key(case), Err(KeyError::Invalid), "{case:?}");
        }
    }

    #[test]
    fn length_limit_is_255_characters() {
        let longest = "k".repeat(MAX_KEY_LEN);
        assert_eq!(parse_key(longest.as_bytes()).unwrap(), longest);

        let too_long = "k".repeat(MAX_KEY_LEN + 1);
        assert_eq!(parse_key(too_long.as_bytes()), Err(KeyError::Invalid));

        let quoted_longest = format!("\"{longest}\"");
        assert_eq!(parse_key(quoted_longest.as_bytes()).unwrap(), longest);
    }

    #[test]
    fn repeated_field_is_rejected() {
        let mut headers = HeaderMap::new();
        headers.append(IDEMPOTENCY_KEY, HeaderValue::from_static("a"));
        headers.append(IDEMPOTENCY_KEY, HeaderValue::from_static("a"));

        assert_eq!(key_from_headers(&headers), Err(KeyError::Repeated));
    }

    #[test]
    fn missing_field_is_none() {
        assert_eq!(key_from_headers(&HeaderMap::new()), Ok(None));
    }
}
