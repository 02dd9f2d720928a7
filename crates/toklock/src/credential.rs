//! Credentials identify a budget (one organisation's limits) but are never stored or logged:
//! only a short, one-way fingerprint leaves this module.

use std::fmt;

use http::HeaderMap;
use sha2::{Digest, Sha256};

/// A short one-way fingerprint of the caller's credential (`x-api-key` or `authorization`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 6]);

impl Fingerprint {
    /// Fingerprints whatever credential the request carries; `x-api-key` wins when both are
    /// present. Requests without one share the `anonymous` fingerprint.
    pub fn of_request(headers: &HeaderMap) -> Fingerprint {
        let credential = headers
            .get("x-api-key")
            .or_else(|| headers.get(http::header::AUTHORIZATION))
            .map(|value| value.as_bytes())
            .unwrap_or_default();
        Self::of_bytes(credential)
    }

    pub fn of_bytes(secret: &[u8]) -> Fingerprint {
        let digest = Sha256::digest(secret);
        let mut short = [0u8; 6];
        short.copy_from_slice(&digest[..6]);
        Fingerprint(short)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_short_and_hides_the_key() {
        let key = "sk-ant-api03-secret-value";
        let fp = Fingerprint::of_bytes(key.as_bytes()).to_string();
        assert_eq!(fp.len(), 12);
        assert!(!key.contains(&fp));
    }

    #[test]
    fn x_api_key_and_bearer_differ_and_are_stable() {
        let mut a = HeaderMap::new();
        a.insert("x-api-key", "k1".parse().unwrap());
        let mut b = HeaderMap::new();
        b.insert("authorization", "Bearer k1".parse().unwrap());
        assert_ne!(Fingerprint::of_request(&a), Fingerprint::of_request(&b));
        assert_eq!(
            Fingerprint::of_request(&a),
            Fingerprint::of_request(&a.clone())
        );
    }
}
