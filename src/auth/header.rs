//! The strict parser and formatter of the `X-Authentication` header value.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// The version token that starts every header value.
const VERSION: &str = "v1";

/// The maximum number of digits in `ts`, by the `[1-9][0-9]{0,10}` grammar.
const MAX_TS_DIGITS: usize = 11;

/// The length of a signature in standard base64 with padding.
const SIGNATURE_BASE64_LEN: usize = 44;

/// A parsed `X-Authentication` header value.
///
/// Parsing follows the protocol's grammar strictly:
///
/// ```text
/// v1; kid=<key id>; ts=<unix seconds>; nonce=<nonce>; sig=<signature>
/// ```
///
/// Each of `kid`, `ts`, `nonce` and `sig` appears exactly once, in any
/// order, with optional spaces or tabs around `;` and none around `=`.
/// Spaces and tabs before `v1` and after the last parameter are ignored,
/// because HTTP does not count them as part of a field value.
///
/// The parsed value keeps the header's own characters for `ts`, because
/// the string to sign uses them unchanged.
///
/// `Debug` prints the key id, timestamp and nonce, never the signature.
///
/// ```
/// use tower_courier::auth::SignatureHeader;
///
/// let value = "v1; kid=orders; ts=1700000000; nonce=AAAAAAAAAAAAAAAAAAAAAA; \
///              sig=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
/// let header = SignatureHeader::parse(value.as_bytes()).unwrap();
/// assert_eq!(header.kid(), "orders");
/// assert_eq!(header.timestamp(), 1_700_000_000);
/// assert_eq!(header.to_string(), value);
///
/// assert!(SignatureHeader::parse(value.replace("ts=", "ts=+").as_bytes()).is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SignatureHeader {
    // `kid`, `ts` and `nonce` back to back in one allocation, because the
    // verifier parses a header on every request. Both ends fit in a `u8`:
    // the three are at most 64 + 11 + 64 bytes long.
    text: String,
    kid_end: u8,
    ts_end: u8,
    timestamp: u64,
    signature: [u8; 32],
}

/// The error returned when a header value does not follow the grammar.
///
/// The message names the first rule that failed and never echoes the
/// value, which may carry a signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseHeaderError {
    reason: &'static str,
}

impl fmt::Display for ParseHeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid X-Authentication value: {}", self.reason)
    }
}

impl std::error::Error for ParseHeaderError {}

fn invalid(reason: &'static str) -> ParseHeaderError {
    ParseHeaderError { reason }
}

/// The four parameters as found, before the header is assembled.
#[derive(Default)]
struct Parameters<'a> {
    kid: Option<&'a str>,
    ts: Option<&'a str>,
    nonce: Option<&'a str>,
    sig: Option<&'a str>,
}

impl SignatureHeader {
    /// Parses a header value.
    ///
    /// # Errors
    ///
    /// Returns [`ParseHeaderError`] when the value is not ASCII, does not
    /// start with `v1`, has an empty, unknown, repeated or missing
    /// parameter, or a parameter value outside its grammar.
    pub fn parse(value: &[u8]) -> Result<Self, ParseHeaderError> {
        let text = std::str::from_utf8(value)
            .ok()
            .filter(|text| text.is_ascii())
            .ok_or_else(|| invalid("not ASCII"))?;

        let mut pieces = split_ascii(text, b';');
        let version = pieces.next().map(trim_whitespace);
        if version.map(str::as_bytes) != Some(VERSION.as_bytes()) {
            return Err(invalid("does not start with v1"));
        }

        let mut parameters = Parameters::default();
        for piece in pieces {
            parameters.add(trim_whitespace(piece))?;
        }
        parameters.finish()
    }

    /// Creates a header from its parts, checking each against the grammar.
    ///
    /// # Errors
    ///
    /// Returns [`ParseHeaderError`] when `kid` or `nonce` is outside its
    /// grammar, or `timestamp` is 0 or longer than 11 digits.
    pub fn new(
        kid: &str,
        timestamp: u64,
        nonce: &str,
        signature: [u8; 32],
    ) -> Result<Self, ParseHeaderError> {
        let ts = timestamp.to_string();
        let kid = check_kid(kid)?;
        let nonce = check_nonce(nonce)?;
        let timestamp = check_ts(&ts)?;

        Ok(Self::assemble(kid, &ts, timestamp, nonce, signature))
    }

    /// Builds the value from parts already checked against the grammar.
    fn assemble(kid: &str, ts: &str, timestamp: u64, nonce: &str, signature: [u8; 32]) -> Self {
        let mut text = String::with_capacity(kid.len() + ts.len() + nonce.len());
        text.push_str(kid);
        text.push_str(ts);
        text.push_str(nonce);
        let narrow = |end: usize| u8::try_from(end).expect("kid and ts are at most 75 bytes");

        Self {
            text,
            kid_end: narrow(kid.len()),
            ts_end: narrow(kid.len() + ts.len()),
            timestamp,
            signature,
        }
    }

    /// Returns the key id.
    pub fn kid(&self) -> &str {
        &self.text[..usize::from(self.kid_end)]
    }

    /// Returns `ts` exactly as the header spells it.
    pub fn ts(&self) -> &str {
        &self.text[usize::from(self.kid_end)..usize::from(self.ts_end)]
    }

    /// Returns `ts` as Unix seconds.
    pub fn timestamp(&self) -> u64 {
        self.timestamp
    }

    /// Returns the nonce.
    pub fn nonce(&self) -> &str {
        &self.text[usize::from(self.ts_end)..]
    }

    /// Returns the 32-byte HMAC-SHA256 signature.
    pub fn signature(&self) -> &[u8; 32] {
        &self.signature
    }
}

impl fmt::Display for SignatureHeader {
    /// Formats the value in the canonical order `v1; kid; ts; nonce; sig`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{VERSION}; kid={}; ts={}; nonce={}; sig={}",
            self.kid(),
            self.ts(),
            self.nonce(),
            STANDARD.encode(self.signature)
        )
    }
}

impl fmt::Debug for SignatureHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignatureHeader")
            .field("kid", &self.kid())
            .field("ts", &self.ts())
            .field("nonce", &self.nonce())
            .finish_non_exhaustive()
    }
}

impl<'a> Parameters<'a> {
    fn add(&mut self, piece: &'a str) -> Result<(), ParseHeaderError> {
        if piece.is_empty() {
            return Err(invalid("empty parameter"));
        }

        let equals = piece
            .bytes()
            .position(|byte| byte == b'=')
            .ok_or_else(|| invalid("parameter without '='"))?;
        let (name, value) = (&piece[..equals], &piece[equals + 1..]);
        // Byte patterns compile to a length check and a few compares,
        // where string patterns call `memcmp` for each arm.
        let slot = match name.as_bytes() {
            [b'k', b'i', b'd'] => &mut self.kid,
            [b't', b's'] => &mut self.ts,
            [b'n', b'o', b'n', b'c', b'e'] => &mut self.nonce,
            [b's', b'i', b'g'] => &mut self.sig,
            _ => return Err(invalid("unknown parameter")),
        };

        if slot.replace(value).is_some() {
            return Err(invalid("repeated parameter"));
        }
        Ok(())
    }

    fn finish(self) -> Result<SignatureHeader, ParseHeaderError> {
        let missing = || invalid("missing parameter");
        let kid = check_kid(self.kid.ok_or_else(missing)?)?;
        let ts = self.ts.ok_or_else(missing)?;
        let timestamp = check_ts(ts)?;
        let nonce = check_nonce(self.nonce.ok_or_else(missing)?)?;
        let signature = decode_signature(self.sig.ok_or_else(missing)?)?;

        Ok(SignatureHeader::assemble(
            kid, ts, timestamp, nonce, signature,
        ))
    }
}

/// Splits ASCII `text` at every `separator` byte. A byte loop, because
/// `str::split` with a char pattern sets up `memchr` for every piece, which
/// took a third of the parse time on these short values.
fn split_ascii(text: &str, separator: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.bytes().position(|byte| byte == separator) {
            Some(at) => {
                rest = Some(&current[at + 1..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// Trims spaces and tabs, byte by byte, because this runs on every
/// request and char patterns decode UTF-8 first.
fn trim_whitespace(text: &str) -> &str {
    let is_content = |byte: &u8| !matches!(byte, b' ' | b'\t');
    let bytes = text.as_bytes();
    let start = bytes.iter().position(is_content).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(is_content)
        .map_or(start, |last| last + 1);
    // Spaces and tabs are single bytes, so both ends are char boundaries.
    &text[start..end]
}

/// Checks a key id: 1 to 64 characters from `A-Z a-z 0-9 . _ -`.
pub(crate) fn check_kid(kid: &str) -> Result<&str, ParseHeaderError> {
    let allowed = |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-');
    if (1..=64).contains(&kid.len()) && kid.bytes().all(allowed) {
        Ok(kid)
    } else {
        Err(invalid(
            "kid is not 1 to 64 characters of A-Z a-z 0-9 . _ -",
        ))
    }
}

fn check_nonce(nonce: &str) -> Result<&str, ParseHeaderError> {
    let allowed = |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_');
    if (16..=64).contains(&nonce.len()) && nonce.bytes().all(allowed) {
        Ok(nonce)
    } else {
        Err(invalid("nonce is not 16 to 64 base64url characters"))
    }
}

/// Checks `ts` against `[1-9][0-9]{0,10}`, which also keeps it far below
/// `u64::MAX`, so the conversion cannot overflow.
fn check_ts(ts: &str) -> Result<u64, ParseHeaderError> {
    let bytes = ts.as_bytes();
    let canonical = (1..=MAX_TS_DIGITS).contains(&bytes.len())
        && bytes[0] != b'0'
        && bytes.iter().all(u8::is_ascii_digit);
    if !canonical {
        return Err(invalid("ts is not 1 to 11 digits without a leading zero"));
    }

    let timestamp = bytes
        .iter()
        .fold(0_u64, |sum, digit| sum * 10 + u64::from(digit - b'0'));
    Ok(timestamp)
}

/// Decodes `sig`: exactly 44 characters of padded standard base64 in
/// canonical form, decoding to 32 bytes.
fn decode_signature(sig: &str) -> Result<[u8; 32], ParseHeaderError> {
    let not_canonical = || invalid("sig is not 44 characters of canonical base64");
    if sig.len() != SIGNATURE_BASE64_LEN {
        return Err(not_canonical());
    }

    // The STANDARD engine requires padding and rejects non-zero trailing
    // bits, so only the canonical spelling of 32 bytes decodes.
    let mut signature = [0_u8; 32];
    let written = STANDARD
        .decode_slice(sig, &mut signature)
        .map_err(|_| not_canonical())?;
    if written != signature.len() {
        return Err(not_canonical());
    }
    Ok(signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    fn value(ts: &str) -> String {
        format!("v1; kid=k1; ts={ts}; nonce=0123456789abcdef; sig={SIG}")
    }

    #[test]
    fn canonical_value_round_trips() {
        let text = value("1700000000");
        let header = SignatureHeader::parse(text.as_bytes()).unwrap();

        assert_eq!(header.to_string(), text);
        assert_eq!(header.timestamp(), 1_700_000_000);
    }

    #[test]
    fn parameters_in_any_order_with_tabs() {
        let text = format!("v1\t;sig={SIG} ;nonce=0123456789abcdef;\tts=1;kid=k1");

        let header = SignatureHeader::parse(text.as_bytes()).unwrap();

        assert_eq!(header.ts(), "1");
    }

    #[test]
    fn largest_ts_does_not_overflow() {
        let header = SignatureHeader::parse(value("99999999999").as_bytes()).unwrap();

        assert_eq!(header.timestamp(), 99_999_999_999);
    }

    #[test]
    fn non_canonical_ts_is_invalid() {
        for ts in [
            "+1700000000",
            "01700000000",
            "1700000000000",
            "-1",
            "0",
            "1.5",
            "1e9",
            "",
        ] {
            assert!(
                SignatureHeader::parse(value(ts).as_bytes()).is_err(),
                "{ts}"
            );
        }
    }

    #[test]
    fn empty_repeated_and_unknown_parameters_are_invalid() {
        let good = value("1");
        let cases = [
            format!("{good};"),
            good.replace("; ts", ";; ts"),
            good.replace("kid=k1", "kid="),
            format!("{good}; kid=k1"),
            format!("{good}; extra=1"),
            good.replace("kid=k1", "kid =k1"),
            good.replace("kid=k1", "kid= k1"),
            good.replace("v1;", "v2;"),
            good.replace("v1;", "v1 x;"),
            good.replace("; sig=", "; signature="),
        ];

        for case in cases {
            assert!(SignatureHeader::parse(case.as_bytes()).is_err(), "{case}");
        }
    }

    #[test]
    fn debug_omits_signature() {
        let header = SignatureHeader::parse(value("1").as_bytes()).unwrap();

        assert!(!format!("{header:?}").contains(SIG));
    }
}
