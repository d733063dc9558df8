//! The binary form of header maps in stores.
//!
//! Layout: for each field, in order, a `u16` big-endian name length, the
//! lowercase name, a `u32` big-endian value length and the raw value bytes.
//! Repeated names are repeated fields, so multiple values and non-UTF-8
//! bytes round-trip exactly.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::{StoreError, StoreErrorKind};

/// Encodes `headers` in the binary form above.
pub(crate) fn encode_headers(headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        let name = name.as_str().as_bytes();
        let value = value.as_bytes();
        // Header names are far shorter than 64 KiB and values than 4 GiB in
        // any HTTP implementation, so the casts cannot truncate.
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// Decodes bytes written by [`encode_headers`].
pub(crate) fn decode_headers(mut bytes: &[u8]) -> Result<HeaderMap, StoreError> {
    let mut headers = HeaderMap::new();
    while !bytes.is_empty() {
        let name_len = usize::from(u16::from_be_bytes(take_array(&mut bytes)?));
        let name = HeaderName::from_bytes(take(&mut bytes, name_len)?).map_err(corrupt)?;
        let value_len = u32::from_be_bytes(take_array(&mut bytes)?) as usize;
        let value = HeaderValue::from_bytes(take(&mut bytes, value_len)?).map_err(corrupt)?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn take<'a>(bytes: &mut &'a [u8], len: usize) -> Result<&'a [u8], StoreError> {
    if bytes.len() < len {
        return Err(StoreError::new(
            StoreErrorKind::Corrupt,
            "stored headers are truncated",
        ));
    }
    let (head, tail) = bytes.split_at(len);
    *bytes = tail;
    Ok(head)
}

fn take_array<const N: usize>(bytes: &mut &[u8]) -> Result<[u8; N], StoreError> {
    let head = take(bytes, N)?;
    let mut array = [0; N];
    array.copy_from_slice(head);
    Ok(array)
}

fn corrupt(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::new(StoreErrorKind::Corrupt, "stored headers are invalid").with_source(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_and_binary_values_round_trip() {
        let mut headers = HeaderMap::new();
        headers.append("link", HeaderValue::from_static("<a>; rel=next"));
        headers.append("link", HeaderValue::from_static("<b>; rel=prev"));
        headers.append("x-raw", HeaderValue::from_bytes(b"caf\xe9").unwrap());

        let decoded = decode_headers(&encode_headers(&headers)).unwrap();

        let links: Vec<_> = decoded.get_all("link").iter().collect();
        assert_eq!(links, ["<a>; rel=next", "<b>; rel=prev"]);
        assert_eq!(decoded["x-raw"].as_bytes(), b"caf\xe9");
    }

    #[test]
    fn truncated_input_is_corrupt() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        let encoded = encode_headers(&headers);

        let error = decode_headers(&encoded[..encoded.len() - 1]).unwrap_err();

        assert_eq!(error.kind(), StoreErrorKind::Corrupt);
    }
}
