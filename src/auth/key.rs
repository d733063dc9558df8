//! Shared secrets, the key ring and the key file format.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::canonical::SignedParts;
use super::header::check_kid;

/// The shortest accepted secret, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// The authenticated key id of a verified request.
///
/// The verifying layer puts it in the request's extensions, where handlers
/// and the idempotency layer read it:
///
/// ```
/// use tower_courier::auth::KeyId;
///
/// # let mut request = http::Request::new(());
/// # request.extensions_mut().insert(KeyId::new("orders"));
/// let kid = request.extensions().get::<KeyId>().map(KeyId::as_str);
/// assert_eq!(kid, Some("orders"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyId(Arc<str>);

impl KeyId {
    /// Creates a key id. The verifying layer creates it from the header's
    /// `kid`, so handlers only read it.
    pub fn new(kid: &str) -> Self {
        Self(Arc::from(kid))
    }

    /// Returns the key id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A named HMAC-SHA256 secret with an optional validity window.
///
/// `Debug` prints the key id and the window, never the secret.
#[derive(Clone)]
pub struct Key {
    kid: KeyId,
    // Keyed once here, so each signature starts from a cloned state.
    mac: Hmac<Sha256>,
    not_before: Option<SystemTime>,
    not_after: Option<SystemTime>,
}

impl Key {
    /// Creates a key from a secret in standard base64 (RFC 4648 section 4,
    /// with padding). Spaces and line breaks around the text are ignored.
    ///
    /// # Errors
    ///
    /// Returns [`KeyRingError`] when `kid` is not 1 to 64 characters of
    /// `A-Z a-z 0-9 . _ -`, or the secret is empty, not valid base64, or
    /// shorter than 32 bytes.
    pub fn from_base64(kid: &str, secret: &str) -> Result<Self, KeyRingError> {
        let secret = secret.trim();
        if secret.is_empty() {
            return Err(KeyRingError::new(KeyRingErrorKind::EmptySecret, kid));
        }

        let bytes = STANDARD
            .decode(secret)
            .map_err(|_| KeyRingError::new(KeyRingErrorKind::InvalidBase64, kid))?;
        Self::from_bytes(kid, &bytes)
    }

    /// Creates a key from raw secret bytes.
    ///
    /// # Errors
    ///
    /// Returns [`KeyRingError`] when `kid` is outside its grammar, or the
    /// secret is empty or shorter than 32 bytes.
    pub fn from_bytes(kid: &str, secret: &[u8]) -> Result<Self, KeyRingError> {
        check_kid(kid).map_err(|_| KeyRingError::new(KeyRingErrorKind::InvalidKeyId, kid))?;
        if secret.is_empty() {
            return Err(KeyRingError::new(KeyRingErrorKind::EmptySecret, kid));
        }
        if secret.len() < MIN_SECRET_LEN {
            return Err(KeyRingError::new(
                KeyRingErrorKind::ShortSecret(secret.len()),
                kid,
            ));
        }

        let mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
        Ok(Self {
            kid: KeyId::new(kid),
            mac,
            not_before: None,
            not_after: None,
        })
    }

    /// Makes the key valid only from `time` on (inclusive). By default a
    /// key has no start.
    pub fn not_before(mut self, time: SystemTime) -> Self {
        self.not_before = Some(time);
        self
    }

    /// Makes the key invalid after `time` (exclusive). By default a key
    /// does not expire.
    pub fn not_after(mut self, time: SystemTime) -> Self {
        self.not_after = Some(time);
        self
    }

    /// Returns the key id.
    pub fn kid(&self) -> &str {
        self.kid.as_str()
    }

    /// Returns the key id as the request extension the verifying layer
    /// inserts, sharing this key's copy of the text.
    pub(crate) fn id(&self) -> &KeyId {
        &self.kid
    }

    /// Returns `true` if the key may verify requests at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        let started = self.not_before.is_none_or(|start| now >= start);
        let ended = self.not_after.is_some_and(|end| now > end);
        started && !ended
    }

    /// Computes HMAC-SHA256 of `message` with this key.
    pub fn sign(&self, message: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(message);
        mac.finalize().into_bytes().into()
    }

    /// Computes the signature of `parts`, the same as [`Key::sign`] over
    /// [`SignedParts::string_to_sign`] without building that string.
    pub(crate) fn sign_parts(&self, parts: &SignedParts<'_>) -> [u8; 32] {
        self.mac_over(parts).finalize().into_bytes().into()
    }

    /// Checks `signature` against the signature of `parts` in constant time.
    pub(crate) fn verify_parts(&self, parts: &SignedParts<'_>, signature: &[u8; 32]) -> bool {
        self.mac_over(parts).verify_slice(signature).is_ok()
    }

    fn mac_over(&self, parts: &SignedParts<'_>) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        for (index, line) in parts.lines().iter().enumerate() {
            if index > 0 {
                mac.update(b"\n");
            }
            mac.update(line.as_bytes());
        }
        mac
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The keys a service signs and verifies with, by key id, with one key
/// marked for signing.
///
/// Clones share the keys. The validity windows of [`Key::not_before`] and
/// [`Key::not_after`] apply to verification only: the signing key signs
/// whatever the time, so that a sender's clock is never a reason to send
/// an unsigned request.
///
/// During a rotation the receiver's ring contains the old and the new key,
/// with overlapping windows, and the senders switch their signing key.
#[derive(Clone)]
pub struct KeyRing {
    inner: Arc<Inner>,
}

struct Inner {
    // Behind `Arc`, so that a verification in flight keeps a reference to
    // its key without copying the keyed HMAC state.
    keys: HashMap<String, Arc<Key>>,
    signing_kid: String,
}

/// The reason a key lookup found no usable key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LookupError {
    Unknown,
    Inactive,
}

impl KeyRing {
    /// Creates a ring of one key, which also signs.
    pub fn single(key: Key) -> Self {
        let signing_kid = key.kid().to_owned();
        let keys = HashMap::from([(key.kid().to_owned(), Arc::new(key))]);
        Self {
            inner: Arc::new(Inner { keys, signing_kid }),
        }
    }

    /// Creates a builder for a ring of several keys.
    pub fn builder() -> KeyRingBuilder {
        KeyRingBuilder::default()
    }

    /// Parses the key file format: one `KID BASE64-SECRET` pair a line,
    /// separated by spaces or tabs. Blank lines and lines starting with `#`
    /// are ignored. The first key signs.
    ///
    /// ```
    /// use tower_courier::auth::KeyRing;
    ///
    /// let text = "# orders service\n\
    ///             orders-2026 MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n";
    /// let ring = KeyRing::from_key_file(text).unwrap();
    /// assert_eq!(ring.signing_key().kid(), "orders-2026");
    ///
    /// assert!(KeyRing::from_key_file("orders c2hvcnQ=").is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// Returns [`KeyRingError`] with the line number when a line does not
    /// have two fields or its key is invalid, when two lines name one key
    /// id, or when the text has no key.
    pub fn from_key_file(text: &str) -> Result<Self, KeyRingError> {
        let mut builder = Self::builder();
        for (index, line) in text.lines().enumerate() {
            let line_number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }

            let key = parse_key_line(line).map_err(|error| error.at_line(line_number))?;
            builder = if builder.keys.is_empty() {
                builder.signing_key(key)
            } else {
                builder.key(key)
            };
        }
        builder.build()
    }

    /// Reads a key file from `path`; see [`KeyRing::from_key_file`].
    ///
    /// # Errors
    ///
    /// Returns [`KeyRingError`] when the file cannot be read or its
    /// content is invalid.
    pub fn read_key_file(path: impl AsRef<Path>) -> Result<Self, KeyRingError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| {
            let mut failure = KeyRingError::new(KeyRingErrorKind::Io, "").with_source(error);
            failure.path = Some(path.to_path_buf());
            failure
        })?;
        Self::from_key_file(&text)
    }

    /// Returns the key that signs outgoing requests.
    pub fn signing_key(&self) -> &Key {
        &self.inner.keys[&self.inner.signing_kid]
    }

    /// Returns the key named `kid`, whatever its validity window.
    pub fn get(&self, kid: &str) -> Option<&Key> {
        self.inner.keys.get(kid).map(Arc::as_ref)
    }

    /// Returns the key named `kid` if it is valid at `now`.
    pub(crate) fn lookup(&self, kid: &str, now: SystemTime) -> Result<&Arc<Key>, LookupError> {
        let key = self.inner.keys.get(kid).ok_or(LookupError::Unknown)?;
        if key.is_valid_at(now) {
            Ok(key)
        } else {
            Err(LookupError::Inactive)
        }
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&str> = self.inner.keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        f.debug_struct("KeyRing")
            .field("kids", &kids)
            .field("signing_kid", &self.inner.signing_kid)
            .finish()
    }
}

fn parse_key_line(line: &str) -> Result<Key, KeyRingError> {
    let mut fields = line.split([' ', '\t']).filter(|field| !field.is_empty());
    let (Some(kid), Some(secret), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err(KeyRingError::new(KeyRingErrorKind::InvalidLine, ""));
    };
    Key::from_base64(kid, secret)
}

/// Builds a [`KeyRing`] of several keys.
#[derive(Debug, Default)]
pub struct KeyRingBuilder {
    keys: Vec<Key>,
    signing_kid: Option<String>,
    signing_keys: usize,
}

impl KeyRingBuilder {
    /// Adds a key that verifies but does not sign.
    pub fn key(mut self, key: Key) -> Self {
        self.keys.push(key);
        self
    }

    /// Adds the key that signs outgoing requests. It also verifies.
    pub fn signing_key(mut self, key: Key) -> Self {
        self.signing_kid = Some(key.kid().to_owned());
        self.signing_keys += 1;
        self.keys.push(key);
        self
    }

    /// Builds the ring.
    ///
    /// # Errors
    ///
    /// Returns [`KeyRingError`] when no key or no signing key was added,
    /// when more than one signing key was added, or when two keys share a
    /// key id.
    pub fn build(self) -> Result<KeyRing, KeyRingError> {
        let signing_kid = match (self.signing_kid, self.signing_keys) {
            (Some(kid), 1) => kid,
            (_, 0) => return Err(KeyRingError::new(KeyRingErrorKind::NoSigningKey, "")),
            (Some(kid), _) => {
                return Err(KeyRingError::new(
                    KeyRingErrorKind::SeveralSigningKeys,
                    &kid,
                ));
            }
            (None, _) => unreachable!("a counted signing key always sets its kid"),
        };

        let mut keys = HashMap::with_capacity(self.keys.len());
        for key in self.keys {
            if keys.contains_key(key.kid()) {
                return Err(KeyRingError::new(
                    KeyRingErrorKind::DuplicateKeyId,
                    key.kid(),
                ));
            }
            keys.insert(key.kid().to_owned(), Arc::new(key));
        }

        Ok(KeyRing {
            inner: Arc::new(Inner { keys, signing_kid }),
        })
    }
}

/// The error returned when a key or key ring cannot be built.
///
/// The message names the key id and, for a key file, the line, but never
/// the secret.
#[derive(Debug)]
pub struct KeyRingError {
    kind: KeyRingErrorKind,
    kid: String,
    path: Option<std::path::PathBuf>,
    line: Option<usize>,
    source: Option<std::io::Error>,
}

/// The kind of problem with a key or key ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyRingErrorKind {
    /// The key id is not 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
    InvalidKeyId,
    /// The secret is empty.
    EmptySecret,
    /// The secret is not valid standard base64 with padding.
    InvalidBase64,
    /// The secret has this many bytes, fewer than [`MIN_SECRET_LEN`].
    ShortSecret(usize),
    /// Two keys share a key id.
    DuplicateKeyId,
    /// The ring has no signing key (or no key at all).
    NoSigningKey,
    /// More than one key was marked for signing.
    SeveralSigningKeys,
    /// A key file line does not have exactly two fields.
    InvalidLine,
    /// The key file could not be read.
    Io,
}

impl KeyRingError {
    fn new(kind: KeyRingErrorKind, kid: &str) -> Self {
        Self {
            kind,
            kid: kid.to_owned(),
            path: None,
            line: None,
            source: None,
        }
    }

    fn at_line(mut self, line: usize) -> Self {
        self.line = Some(line);
        self
    }

    fn with_source(mut self, source: std::io::Error) -> Self {
        self.source = Some(source);
        self
    }

    /// Returns what is wrong.
    pub fn kind(&self) -> KeyRingErrorKind {
        self.kind
    }
}

impl fmt::Display for KeyRingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        let kid = &self.kid;
        match self.kind {
            KeyRingErrorKind::InvalidKeyId => write!(
                f,
                "invalid key id {kid:?}: use 1 to 64 characters of A-Z a-z 0-9 . _ -"
            ),
            KeyRingErrorKind::EmptySecret => write!(f, "key {kid:?} has an empty secret"),
            KeyRingErrorKind::InvalidBase64 => write!(
                f,
                "key {kid:?}: secret is not valid standard base64 with padding"
            ),
            KeyRingErrorKind::ShortSecret(len) => write!(
                f,
                "key {kid:?}: secret is {len} bytes, shorter than the {MIN_SECRET_LEN}-byte minimum"
            ),
            KeyRingErrorKind::DuplicateKeyId => write!(f, "key id {kid:?} is used twice"),
            KeyRingErrorKind::NoSigningKey => f.write_str("key ring has no signing key"),
            KeyRingErrorKind::SeveralSigningKeys => {
                f.write_str("key ring has more than one signing key")
            }
            KeyRingErrorKind::InvalidLine => {
                f.write_str("expected a key id and a base64 secret separated by a space")
            }
            KeyRingErrorKind::Io => match &self.path {
                Some(path) => write!(f, "failed to read key file {}", path.display()),
                None => f.write_str("failed to read key file"),
            },
        }
    }
}

impl std::error::Error for KeyRingError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|source| source as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    const SECRET: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    #[test]
    fn weak_secrets_are_rejected() {
        let cases = [
            ("", KeyRingErrorKind::EmptySecret),
            ("   ", KeyRingErrorKind::EmptySecret),
            ("not base64!", KeyRingErrorKind::InvalidBase64),
            ("c2hvcnQ=", KeyRingErrorKind::ShortSecret(5)),
        ];

        for (secret, kind) in cases {
            let error = Key::from_base64("k1", secret).unwrap_err();
            assert_eq!(error.kind(), kind, "{secret:?}");
        }
    }

    #[test]
    fn parts_sign_like_the_string_to_sign() {
        let key = Key::from_base64("k1", SECRET).unwrap();
        let parts = SignedParts {
            kid: "k1",
            ts: "1700000000",
            nonce: "0123456789abcdef",
            method: "POST",
            path_and_query: "/a?b=c",
            body_digest: "00",
        };

        let signature = key.sign(parts.string_to_sign().as_bytes());

        assert_eq!(key.sign_parts(&parts), signature);
        assert!(key.verify_parts(&parts, &signature));
        let mut wrong = signature;
        wrong[31] ^= 1;
        assert!(!key.verify_parts(&parts, &wrong));
    }

    #[test]
    fn invalid_key_id_is_rejected() {
        let error = Key::from_base64("k 1", SECRET).unwrap_err();

        assert_eq!(error.kind(), KeyRingErrorKind::InvalidKeyId);
    }

    #[test]
    fn debug_omits_secret() {
        let key = Key::from_base64("k1", SECRET).unwrap();
        let ring = KeyRing::single(key.clone());

        for text in [format!("{key:?}"), format!("{ring:?}")] {
            assert!(!text.contains(SECRET), "{text}");
            assert!(!text.contains("0123456789abcdef"), "{text}");
        }
    }

    #[test]
    fn validity_window_bounds() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000);
        let end = UNIX_EPOCH + Duration::from_secs(2_000);
        let key = Key::from_base64("k1", SECRET)
            .unwrap()
            .not_before(start)
            .not_after(end);

        assert!(!key.is_valid_at(start - Duration::from_secs(1)));
        assert!(key.is_valid_at(start));
        assert!(key.is_valid_at(end));
        assert!(!key.is_valid_at(end + Duration::from_secs(1)));
    }

    #[test]
    fn key_file_first_key_signs() {
        let text = format!("# comment\n\nnew\t{SECRET}\n  old {SECRET}  \n");

        let ring = KeyRing::from_key_file(&text).unwrap();

        assert_eq!(ring.signing_key().kid(), "new");
        assert!(ring.get("old").is_some());
    }

    #[test]
    fn key_file_errors_name_the_line() {
        let text = format!("a {SECRET}\nb {SECRET} extra\n");

        let error = KeyRing::from_key_file(&text).unwrap_err();

        assert_eq!(error.kind(), KeyRingErrorKind::InvalidLine);
        assert!(error.to_string().starts_with("line 2: "), "{error}");
    }

    #[test]
    fn key_file_is_read_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.txt");
        std::fs::write(&path, format!("orders {SECRET}\n")).unwrap();

        let ring = KeyRing::read_key_file(&path).unwrap();
        let missing = KeyRing::read_key_file(dir.path().join("absent.txt")).unwrap_err();

        assert_eq!(ring.signing_key().kid(), "orders");
        assert_eq!(missing.kind(), KeyRingErrorKind::Io);
        assert!(missing.to_string().ends_with("absent.txt"), "{missing}");
        assert!(std::error::Error::source(&missing).is_some());
    }

    #[test]
    fn key_file_rejects_duplicates_and_emptiness() {
        let duplicate = KeyRing::from_key_file(&format!("a {SECRET}\na {SECRET}\n")).unwrap_err();
        let empty = KeyRing::from_key_file("# nothing\n").unwrap_err();

        assert_eq!(duplicate.kind(), KeyRingErrorKind::DuplicateKeyId);
        assert_eq!(empty.kind(), KeyRingErrorKind::NoSigningKey);
    }
}
