use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// The unique, time-ordered id of a stored message or command.
///
/// Ids are UUID version 7: their first 48 bits are the creation time in
/// milliseconds, so ids sort by creation time across processes whose clocks
/// agree. The text form is the lowercase hyphenated UUID, for example
/// `01936f4e-8a1b-7c2d-9e3f-0123456789ab`, and is what the outbox sends as
/// the default `Idempotency-Key`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(Uuid);

impl MessageId {
    /// Creates a fresh id from the system clock and a random part.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Creates an id from raw UUID bytes, as stores read them back.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    /// Creates an id derived from `seed` alone: the same seed always gives
    /// the same id.
    ///
    /// The id is a UUID version 8 made of the first bytes of the seed's
    /// SHA-256, so unlike [`MessageId::new`] it is not time-ordered. The
    /// `202 Accepted` layer uses it for commands that carry an
    /// `Idempotency-Key`, so that a retry whose first `202` was lost names
    /// the same command instead of queueing a second one.
    pub(crate) fn derived(seed: &[u8]) -> Self {
        use sha2::{Digest, Sha256};

        let digest = Sha256::digest(seed);
        let mut bytes = [0; 16];
        bytes.copy_from_slice(&digest[..16]);
        // RFC 9562: version 8 in the high nibble of byte 6, variant 0b10 in
        // the top bits of byte 8.
        bytes[6] = (bytes[6] & 0x0f) | 0x80;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Self(Uuid::from_bytes(bytes))
    }

    /// Returns the raw UUID bytes.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.into_bytes()
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// The error returned when text is not a message id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseMessageIdError(());

impl fmt::Display for ParseMessageIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid message id: expected a hyphenated UUID")
    }
}

impl std::error::Error for ParseMessageIdError {}

impl FromStr for MessageId {
    type Err = ParseMessageIdError;

    /// Parses the lowercase or uppercase hyphenated form only, so that every
    /// id has exactly one accepted spelling in URLs.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() != 36 {
            return Err(ParseMessageIdError(()));
        }
        Uuid::try_parse(text)
            .map(Self)
            .map_err(|_| ParseMessageIdError(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_creation() {
        let first = MessageId::new();
        let second = MessageId::new();
        assert!(first < second);
    }

    #[test]
    fn text_form_round_trips() {
        let id = MessageId::new();
        let parsed: MessageId = id.to_string().parse().unwrap();
        assert_eq!(parsed, id);
    }

    #[test]
    fn derived_ids_are_stable_version_8() {
        let first = MessageId::derived(b"seed");
        let again = MessageId::derived(b"seed");
        let other = MessageId::derived(b"other seed");

        assert_eq!(first, again);
        assert_ne!(first, other);
        assert_eq!(first.0.get_version_num(), 8);
        assert_eq!(first.0.get_variant(), uuid::Variant::RFC4122);
    }

    #[test]
    fn non_hyphenated_text_is_rejected() {
        let simple = MessageId::new().to_string().replace('-', "");
        assert!(simple.parse::<MessageId>().is_err());
        assert!("".parse::<MessageId>().is_err());
        assert!("../../etc/passwd".parse::<MessageId>().is_err());
    }
}
