//! Work messages carry a signature: an HMAC-SHA256 of their body with a key the workers, the
//! action runners and `pgevents requeue-dead` share (`--work-key-file`). A job names an action,
//! its parameters and the event; whoever may publish to the work exchange (or to the dead-letter
//! queue that `requeue-dead` reads) could otherwise make an action run, with its owner's rights
//! and secrets, on parameters of their choosing. Without a key messages are not signed, and the
//! runners say so at start (and `pgevents check` warns).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header holding the signature (lower-case hex).
pub const SIGNATURE_HEADER: &str = "pgevents-signature";

/// Shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// The shared key.
#[derive(Clone)]
pub struct WorkKey(Vec<u8>);

impl std::fmt::Debug for WorkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkKey(***)")
    }
}

/// A key that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("the work key (--work-key-file) holds {0} bytes; it needs at least {MIN_KEY_BYTES}: head -c 32 /dev/urandom > work.key")]
pub struct ShortKey(usize);

impl WorkKey {
    /// The key from a file's bytes (a trailing newline is not part of it).
    pub fn new(mut bytes: Vec<u8>) -> Result<WorkKey, ShortKey> {
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        if bytes.len() < MIN_KEY_BYTES {
            return Err(ShortKey(bytes.len()));
        }
        Ok(WorkKey(bytes))
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
    }

    /// The signature of `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(body);
        mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `signature` is `body`'s (compared in constant time).
    pub fn verify(&self, body: &[u8], signature: &str) -> bool {
        let Some(bytes) = decode_hex(signature) else { return false };
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_slice(&bytes).is_ok()
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies_and_refuses_the_rest() {
        let key = WorkKey::new(vec![7u8; 32]).unwrap();
        let signature = key.sign(b"{\"job\":1}");
        assert_eq!(signature.len(), 64);
        assert!(key.verify(b"{\"job\":1}", &signature));
        assert!(!key.verify(b"{\"job\":2}", &signature), "another body");
        assert!(!WorkKey::new(vec![8u8; 32]).unwrap().verify(b"{\"job\":1}", &signature), "another key");
        assert!(!key.verify(b"{\"job\":1}", "zz"));
        assert!(!key.verify(b"{\"job\":1}", ""));
        assert!(WorkKey::new(vec![1u8; 31]).unwrap_err().to_string().contains("at least 32"));
        assert!(!format!("{key:?}").contains('7'));
    }
}
