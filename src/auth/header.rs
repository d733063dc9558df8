//! The strict parser and formatter of the `X-Authentication` header value.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// The version token that starts every header value.
const VERSION: &str = "v1";

/// The maximum number of digits in `ts`, by the `[1-9][0-9]{0,10}` grammar.
const MAX_TS_DIGITS: usize = 11;

/// The maximum length of `kid` and of `nonce`.
const MAX_KID_LEN: usize = 64;
const MAX_NONCE_LEN: usize = 64;

/// The maximum length of `kid`, `ts` and `nonce` together, in bytes.
const MAX_TEXT_LEN: usize = MAX_KID_LEN + MAX_TS_DIGITS + MAX_NONCE_LEN;

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
    // `kid`, `ts` and `nonce` back to back, inline: the verifier parses a
    // header on every request, and an allocation cost a fifth of the
    // parse. The bytes after `len` stay zero, so the derived `PartialEq`
    // compares the text only. The three ends fit in a `u8`.
    text: [u8; MAX_TEXT_LEN],
    kid_end: u8,
    ts_end: u8,
    len: u8,
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
    kid: Option<&'a [u8]>,
    ts: Option<&'a [u8]>,
    nonce: Option<&'a [u8]>,
    sig: Option<&'a [u8]>,
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
        // Every byte of a valid value is checked against an ASCII grammar,
        // so a value that is not ASCII fails below. Checking for that
        // first would cost a pass over every valid header; checking on
        // failure only keeps the reason precise.
        parse_ascii(value).map_err(|error| {
            if value.is_ascii() {
                error
            } else {
                invalid("not ASCII")
            }
        })
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
        let kid = check_kid_bytes(kid.as_bytes())?;
        let nonce = check_nonce(nonce.as_bytes())?;
        let timestamp = check_ts(ts.as_bytes())?;

        Ok(Self::assemble(
            kid,
            ts.as_bytes(),
            timestamp,
            nonce,
            signature,
        ))
    }

    /// Builds the value from parts already checked against the grammar,
    /// which bounds their lengths.
    fn assemble(kid: &[u8], ts: &[u8], timestamp: u64, nonce: &[u8], signature: [u8; 32]) -> Self {
        let kid_end = kid.len();
        let ts_end = kid_end + ts.len();
        let len = ts_end + nonce.len();

        let mut text = [0; MAX_TEXT_LEN];
        text[..kid_end].copy_from_slice(kid);
        text[kid_end..ts_end].copy_from_slice(ts);
        text[ts_end..len].copy_from_slice(nonce);
        let narrow =
            |end: usize| u8::try_from(end).expect("the grammar bounds the text to 139 bytes");

        Self {
            text,
            kid_end: narrow(kid_end),
            ts_end: narrow(ts_end),
            len: narrow(len),
            timestamp,
            signature,
        }
    }

    fn text(&self, start: u8, end: u8) -> &str {
        let bytes = &self.text[usize::from(start)..usize::from(end)];
        std::str::from_utf8(bytes).expect("the grammar admits ASCII only")
    }

    /// Returns the key id.
    pub fn kid(&self) -> &str {
        self.text(0, self.kid_end)
    }

    /// Returns `ts` exactly as the header spells it.
    pub fn ts(&self) -> &str {
        self.text(self.kid_end, self.ts_end)
    }

    /// Returns `ts` as Unix seconds.
    pub fn timestamp(&self) -> u64 {
        self.timestamp
    }

    /// Returns the nonce.
    pub fn nonce(&self) -> &str {
        self.text(self.ts_end, self.len)
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

/// Parses a value made of ASCII bytes only; see [`SignatureHeader::parse`].
fn parse_ascii(value: &[u8]) -> Result<SignatureHeader, ParseHeaderError> {
    let mut pieces = value.split(|byte| *byte == b';');
    let version = pieces.next().map(trim_whitespace);
    if version != Some(VERSION.as_bytes()) {
        return Err(invalid("does not start with v1"));
    }

    let mut parameters = Parameters::default();
    for piece in pieces {
        parameters.add(trim_whitespace(piece))?;
    }
    parameters.finish()
}

impl<'a> Parameters<'a> {
    fn add(&mut self, piece: &'a [u8]) -> Result<(), ParseHeaderError> {
        if piece.is_empty() {
            return Err(invalid("empty parameter"));
        }

        let equals = piece
            .iter()
            .position(|byte| *byte == b'=')
            .ok_or_else(|| invalid("parameter without '='"))?;
        let (name, value) = (&piece[..equals], &piece[equals + 1..]);
        // Byte patterns compile to a length check and a few compares,
        // where string patterns call `memcmp` for each arm.
        let slot = match name {
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
        let kid = check_kid_bytes(self.kid.ok_or_else(missing)?)?;
        let ts = self.ts.ok_or_else(missing)?;
        let timestamp = check_ts(ts)?;
        let nonce = check_nonce(self.nonce.ok_or_else(missing)?)?;
        let signature = decode_signature(self.sig.ok_or_else(missing)?)?;

        Ok(SignatureHeader::assemble(
            kid, ts, timestamp, nonce, signature,
        ))
    }
}

/// Trims spaces and tabs, which HTTP allows around `;`.
fn trim_whitespace(bytes: &[u8]) -> &[u8] {
    let is_content = |byte: &u8| !matches!(byte, b' ' | b'\t');
    let start = bytes.iter().position(is_content).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(is_content)
        .map_or(start, |last| last + 1);
    &bytes[start..end]
}

/// Checks a key id: 1 to 64 characters from `A-Z a-z 0-9 . _ -`.
pub(crate) fn check_kid(kid: &str) -> Result<&str, ParseHeaderError> {
    check_kid_bytes(kid.as_bytes()).map(|_| kid)
}

fn check_kid_bytes(kid: &[u8]) -> Result<&[u8], ParseHeaderError> {
    let allowed = |byte: &u8| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-');
    if (1..=MAX_KID_LEN).contains(&kid.len()) && kid.iter().all(allowed) {
        Ok(kid)
    } else {
        Err(invalid(
            "kid is not 1 to 64 characters of A-Z a-z 0-9 . _ -",
        ))
    }
}

fn check_nonce(nonce: &[u8]) -> Result<&[u8], ParseHeaderError> {
    let allowed = |byte: &u8| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_');
    if (16..=MAX_NONCE_LEN).contains(&nonce.len()) && nonce.iter().all(allowed) {
        Ok(nonce)
    } else {
        Err(invalid("nonce is not 16 to 64 base64url characters"))
    }
}

/// Checks `ts` against `[1-9][0-9]{0,10}`, which also keeps it far below
/// `u64::MAX`, so the conversion cannot overflow.
fn check_ts(ts: &[u8]) -> Result<u64, ParseHeaderError> {
    let canonical = (1..=MAX_TS_DIGITS).contains(&ts.len())
        && ts[0] != b'0'
        && ts.iter().all(u8::is_ascii_digit);
    if !canonical {
        return Err(invalid("ts is not 1 to 11 digits without a leading zero"));
    }

    let timestamp = ts
        .iter()
        .fold(0_u64, |sum, digit| sum * 10 + u64::from(digit - b'0'));
    Ok(timestamp)
}

/// The value of each standard base64 character, and `NOT_BASE64` for
/// every other byte.
const BASE64_VALUES: [u8; 256] = base64_values();

const NOT_BASE64: u8 = 0xff;

const fn base64_values() -> [u8; 256] {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut values = [NOT_BASE64; 256];
    let mut index = 0;
    while index < ALPHABET.len() {
        values[ALPHABET[index] as usize] = index as u8;
        index += 1;
    }
    values
}

/// Decodes `sig`: exactly 44 characters of padded standard base64 in
/// canonical form, decoding to 32 bytes.
///
/// The 43 characters before the `=` carry 258 bits: the 32 bytes, then
/// two bits that must be zero, as the canonical spelling has them. A
/// decoder of its own, because the general one took a quarter of the
/// parse for this one fixed shape.
fn decode_signature(sig: &[u8]) -> Result<[u8; 32], ParseHeaderError> {
    let not_canonical = || invalid("sig is not 44 characters of canonical base64");
    let Some((b'=', characters)) = sig.split_last() else {
        return Err(not_canonical());
    };
    if sig.len() != SIGNATURE_BASE64_LEN {
        return Err(not_canonical());
    }

    let mut sextets = [0_u32; SIGNATURE_BASE64_LEN - 1];
    let mut all_valid = true;
    for (sextet, character) in sextets.iter_mut().zip(characters) {
        let value = BASE64_VALUES[usize::from(*character)];
        all_valid &= value != NOT_BASE64;
        *sextet = u32::from(value);
    }
    if !all_valid {
        return Err(not_canonical());
    }

    let mut signature = [0_u8; 32];
    let (groups, tail) = sextets.split_at(40);
    for (group, bytes) in groups.chunks_exact(4).zip(signature.chunks_exact_mut(3)) {
        let bits = group[0] << 18 | group[1] << 12 | group[2] << 6 | group[3];
        bytes.copy_from_slice(&bits.to_be_bytes()[1..]);
    }
    let bits = tail[0] << 12 | tail[1] << 6 | tail[2];
    if bits & 0b11 != 0 {
        return Err(not_canonical());
    }
    signature[30..].copy_from_slice(&(bits >> 2).to_be_bytes()[2..]);
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

    #[test]
    fn non_ascii_anywhere_is_reported_as_such() {
        let good = value("1700000000");
        for at in 0..good.len() {
            let mut bytes = good.clone().into_bytes();
            bytes[at] = 0xc3;

            let error = SignatureHeader::parse(&bytes).unwrap_err();

            assert_eq!(error, invalid("not ASCII"), "byte {at}");
        }
    }

    #[test]
    fn headers_with_equal_parts_are_equal() {
        let short = SignatureHeader::parse(value("1").as_bytes()).unwrap();
        let long = SignatureHeader::parse(value("1700000000").as_bytes()).unwrap();

        assert_eq!(short, short.clone());
        assert_ne!(short, long);
    }

    proptest::proptest! {
        #[test]
        fn signature_decoding_agrees_with_the_base64_crate(
            characters in "[A-Za-z0-9+/]{43}=|[A-Za-z0-9+/=.-]{44}|[A-Za-z0-9+/]{42}==",
        ) {
            let mut expected = [0_u8; 32];
            let decoded = STANDARD.decode_slice(&characters, &mut expected);
            let expected = matches!(decoded, Ok(32)).then_some(expected);

            let actual = decode_signature(characters.as_bytes()).ok();

            proptest::prop_assert_eq!(actual, expected);
        }

        #[test]
        fn any_signature_round_trips(signature in proptest::array::uniform32(0_u8..)) {
            let encoded = STANDARD.encode(signature);

            proptest::prop_assert_eq!(decode_signature(encoded.as_bytes()), Ok(signature));
        }
    }
}
