//! Signed logical messages: what `pgevents.context()`, `pgevents.skip()` and `pgevents.outbox()`
//! write into the WAL, and their verification (pure: the keys are handed in).
//!
//! `pg_logical_emit_message` needs no privilege, so a message alone says nothing about who
//! sent it. The functions above (SECURITY DEFINER, EXECUTE granted per role) sign what they emit
//! with HMAC-SHA256 under a key only the schema's owner can read, bound to the transaction that
//! emits it:
//!
//! ```text
//! v1|<kid>|<xid>|<kind>|<mac, 64 hex digits>|<payload>
//! mac = HMAC-SHA256(key[kid], "v1|<kid>|<xid>|<kind>|" || payload)
//! ```
//!
//! `xid` is the low 32 bits of `pg_current_xact_id()`: a signature copied into another
//! transaction does not verify there. A key retired before a transaction committed no longer
//! signs for it.

use std::collections::HashMap;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The first bytes of every signed message.
pub const SIGNED_VERSION: &str = "v1";

/// What a signed message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalKind {
    /// Attach a JSON object to every event of the transaction.
    Context,
    /// Publish none of the transaction's row events.
    Skip,
    /// Publish one message of the application's own.
    Outbox,
    /// The keys changed (`pgevents.rotate_message_key()`, signed with the new key): read them
    /// again before the next transaction, so a retired key stops verifying at once.
    Keys,
    /// A backfill's watermark, written by the producer itself around each chunk it reads.
    Watermark,
}

impl SignalKind {
    pub const ALL: [SignalKind; 5] =
        [SignalKind::Context, SignalKind::Skip, SignalKind::Outbox, SignalKind::Keys, SignalKind::Watermark];

    pub fn name(self) -> &'static str {
        match self {
            SignalKind::Context => "context",
            SignalKind::Skip => "skip",
            SignalKind::Outbox => "outbox",
            SignalKind::Keys => "keys",
            SignalKind::Watermark => "watermark",
        }
    }

    fn parse(name: &str) -> Option<SignalKind> {
        SignalKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One signing key, as `pgevents.message_key` holds it.
#[derive(Clone)]
pub struct MessageKey {
    pub secret: Vec<u8>,
    /// Unix microseconds; transactions that commit at or after it are no longer signed by it.
    pub retired_at_micros: Option<i64>,
}

impl std::fmt::Debug for MessageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageKey")
            .field("secret", &"<redacted>")
            .field("retired_at_micros", &self.retired_at_micros)
            .finish()
    }
}

/// The keys messages may be signed with, by key id.
#[derive(Debug, Clone, Default)]
pub struct MessageKeys {
    keys: HashMap<i32, MessageKey>,
}

impl MessageKeys {
    pub fn new(keys: impl IntoIterator<Item = (i32, MessageKey)>) -> MessageKeys {
        MessageKeys { keys: keys.into_iter().collect() }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The newest key id known.
    pub fn newest(&self) -> Option<i32> {
        self.keys.keys().copied().max()
    }
}

/// Why a message was not taken. Each has a short name for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the message is not signed (send it with pgevents.context(), pgevents.skip() or pgevents.outbox(), or start the producer with --allow-unsigned-messages)")]
    Unsigned,
    #[error("the message is not transactional (pg_logical_emit_message(false, ...)); signals must be part of their transaction")]
    NotTransactional,
    #[error("the message looks signed but cannot be read: {0}")]
    Unreadable(String),
    /// Not final: the keys may have to be read again (a key created since they were read).
    #[error("the message is signed with key {0}, which the producer does not know")]
    UnknownKey(i32),
    #[error("the message is signed with key {kid}, retired before its transaction committed")]
    RetiredKey { kid: i32 },
    #[error(
        "the message was signed in transaction {signed}, not in this one: a signature copied from another transaction"
    )]
    OtherTransaction { signed: u32 },
    #[error("the message's signature does not verify: forged or altered")]
    Forged,
}

impl Refusal {
    /// The `reason` label of `pgevents_messages_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::NotTransactional => "not_transactional",
            Refusal::Unreadable(_) => "unreadable",
            Refusal::UnknownKey(_) => "unknown_key",
            Refusal::RetiredKey { .. } => "retired_key",
            Refusal::OtherTransaction { .. } => "other_transaction",
            Refusal::Forged => "forged",
        }
    }
}

/// A message whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified<'a> {
    pub kind: SignalKind,
    pub payload: &'a [u8],
}

/// Whether `content` has the shape of a signed message (the rest is unsigned or foreign).
pub fn looks_signed(content: &[u8]) -> bool {
    content.starts_with(b"v1|")
}

/// Verifies a signed message of the transaction `xid` that commits at `commit_time_micros`.
pub fn verify<'a>(
    content: &'a [u8],
    xid: u32,
    commit_time_micros: i64,
    keys: &MessageKeys,
) -> Result<Verified<'a>, Refusal> {
    let unreadable = |what: &str| Refusal::Unreadable(what.to_owned());
    let mut fields = content.splitn(6, |b| *b == b'|');
    let mut field = |name: &str| fields.next().ok_or_else(|| unreadable(&format!("no {name}")));
    let version = field("version")?;
    let kid = field("key id")?;
    let signed_xid = field("transaction id")?;
    let kind = field("kind")?;
    let mac = field("signature")?;
    let payload = field("payload")?;
    if version != SIGNED_VERSION.as_bytes() {
        return Err(unreadable("unknown version"));
    }
    let number = |bytes: &[u8]| std::str::from_utf8(bytes).ok().and_then(|s| s.parse::<i64>().ok());
    let kid = number(kid).and_then(|k| i32::try_from(k).ok()).ok_or_else(|| unreadable("key id is not a number"))?;
    let signed_xid = number(signed_xid)
        .and_then(|x| u32::try_from(x).ok())
        .ok_or_else(|| unreadable("transaction id is not a number"))?;
    let kind = std::str::from_utf8(kind).ok().and_then(SignalKind::parse).ok_or_else(|| unreadable("unknown kind"))?;
    let mac = decode_hex(mac).ok_or_else(|| unreadable("signature is not 64 hex digits"))?;
    let key = keys.keys.get(&kid).ok_or(Refusal::UnknownKey(kid))?;
    let signed_part = &content[..content.len() - payload.len() - mac_field_len(&mac)];
    let mut hmac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key.secret).map_err(|_| unreadable("empty key"))?;
    hmac.update(signed_part);
    hmac.update(payload);
    // Constant-time comparison; the transaction and the key's age are checked only after the
    // signature, so a forger learns nothing from which refusal it gets.
    hmac.verify_slice(&mac).map_err(|_| Refusal::Forged)?;
    if signed_xid != xid {
        return Err(Refusal::OtherTransaction { signed: signed_xid });
    }
    if key.retired_at_micros.is_some_and(|retired| retired <= commit_time_micros) {
        return Err(Refusal::RetiredKey { kid });
    }
    Ok(Verified { kind, payload })
}

/// The length of `<mac hex>|` in the message.
fn mac_field_len(mac: &[u8]) -> usize {
    mac.len() * 2 + 1
}

fn decode_hex(hex: &[u8]) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

/// Verifies the signature and the transaction only, whatever the key's retirement: what a
/// message signed with a key retired since asked for (an outbox message is then dead-lettered,
/// not lost).
pub fn verify_signature<'a>(content: &'a [u8], xid: u32, keys: &MessageKeys) -> Result<Verified<'a>, Refusal> {
    verify(content, xid, i64::MIN, keys)
}

/// Signs a message as the database functions do (for tests and tools).
pub fn sign(kid: i32, secret: &[u8], xid: u32, kind: SignalKind, payload: &[u8]) -> Vec<u8> {
    let head = format!("{SIGNED_VERSION}|{kid}|{xid}|{}|", kind.name());
    let mut hmac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    hmac.update(head.as_bytes());
    hmac.update(payload);
    let mac: String = hmac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let mut out = format!("{head}{mac}|").into_bytes();
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> MessageKeys {
        MessageKeys::new([
            (1, MessageKey { secret: vec![7; 32], retired_at_micros: Some(1_000) }),
            (2, MessageKey { secret: vec![9; 32], retired_at_micros: None }),
        ])
    }

    #[test]
    fn a_signed_message_verifies_in_its_own_transaction_only() {
        let message = sign(2, &[9; 32], 77, SignalKind::Context, br#"{"uid": 42}"#);
        let verified = verify(&message, 77, 5_000, &keys()).unwrap();
        assert_eq!(verified, Verified { kind: SignalKind::Context, payload: br#"{"uid": 42}"# });
        assert_eq!(verify(&message, 78, 5_000, &keys()), Err(Refusal::OtherTransaction { signed: 77 }));
    }

    #[test]
    fn every_byte_is_covered() {
        let message = sign(2, &[9; 32], 77, SignalKind::Outbox, b"{}\n{\"a\":1}");
        for i in 0..message.len() {
            let mut altered = message.clone();
            altered[i] ^= 0x01;
            assert!(verify(&altered, 77, 0, &keys()).is_err(), "byte {i} altered and still verified");
        }
        let mut longer = message.clone();
        longer.push(b' ');
        assert_eq!(verify(&longer, 77, 0, &keys()), Err(Refusal::Forged));
    }

    #[test]
    fn keys_unknown_wrong_or_retired_are_refused() {
        let other_key = sign(2, &[8; 32], 77, SignalKind::Skip, b"");
        assert_eq!(verify(&other_key, 77, 0, &keys()), Err(Refusal::Forged));
        let unknown = sign(3, &[9; 32], 77, SignalKind::Skip, b"");
        assert_eq!(verify(&unknown, 77, 0, &keys()), Err(Refusal::UnknownKey(3)));
        let old = sign(1, &[7; 32], 77, SignalKind::Skip, b"");
        assert!(verify(&old, 77, 999, &keys()).is_ok(), "committed before the key was retired");
        assert_eq!(verify(&old, 77, 1_000, &keys()), Err(Refusal::RetiredKey { kid: 1 }));
        assert!(verify_signature(&old, 77, &keys()).is_ok(), "authentic, for the dead-letter exchange");
        assert_eq!(verify_signature(&old, 78, &keys()), Err(Refusal::OtherTransaction { signed: 77 }));
    }

    #[test]
    fn every_kind_reads_back() {
        for kind in SignalKind::ALL {
            let message = sign(2, &[9; 32], 77, kind, b"{}");
            assert_eq!(verify(&message, 77, 0, &keys()).map(|v| v.kind), Ok(kind));
        }
    }

    #[test]
    fn garbage_is_unreadable_never_a_panic() {
        for content in
            [&b"v1|"[..], b"v1|x|1|skip|00|", b"v1|1|1|nope|", b"v1|1|-1|skip|", b"v2|1|1|skip|ab|", b"v1|1|1|skip|zz|"]
        {
            assert!(matches!(verify(content, 1, 0, &keys()), Err(Refusal::Unreadable(_))), "{content:?}");
        }
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // Test cases 1 and 2 of RFC 4231; the SQL function pgevents.hmac_sha256 is checked
        // against the same vectors in the end-to-end tests.
        let mac = |key: &[u8], data: &[u8]| {
            let mut hmac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
            hmac.update(data);
            hmac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        assert_eq!(mac(&[0x0b; 20], b"Hi There"), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
        assert_eq!(
            mac(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
