//! Who a subscriber is and what it may read, from a JWT: `sub` names the subscriber, `exp` is
//! required, and so are `aud`/`iss` when configured; the `pgevents` claim grants `tables`
//! (globs; nothing without them) and optionally `rows` (`{"column": "value"}`: only events whose
//! new row, or whose old row, has every one of these columns equal to the value, as text).
//!
//! HS256 tokens are checked with the shared secret, RS256 and ES256 tokens with the public key;
//! a token is only ever checked with the key of its own algorithm family. The reasons given to
//! a client are this module's own words, never text from the token or its decoder: they end up
//! in a response header.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pgevents_event::Glob;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::frame::{value_text, EventFrame};

/// Seconds of clock difference tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;

/// The latest `exp` accepted: the year 9999 (253402300799 is 9999-12-31T23:59:59Z).
const MAX_EXP: u64 = 253_402_300_799;

/// What the gateway checks tokens against (the key material itself, read by the caller).
#[derive(Clone, Default)]
pub struct AuthConfig {
    /// HS256 shared secret (the bytes of `--jwt-secret-file`).
    pub secret: Option<Vec<u8>>,
    /// PEM public key for RS256 or ES256 (`--jwt-public-key-file`).
    pub public_key_pem: Option<Vec<u8>>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("public_key", &self.public_key_pem.is_some())
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl AuthConfig {
    pub fn enabled(&self) -> bool {
        self.secret.is_some() || self.public_key_pem.is_some()
    }
}

/// The key material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("the JWT secret (--jwt-secret-file) is empty")]
    EmptySecret,
    #[error("the JWT public key (--jwt-public-key-file) is neither an RSA nor an EC P-256 public key in PEM (-----BEGIN PUBLIC KEY-----): {0}")]
    PublicKey(String),
}

/// A request without a usable token: 401 with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unauthorized {
    #[error("no token: send Authorization: Bearer <token> or ?access_token=<token>")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// A valid token that does not allow what was asked: 403 with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Forbidden(pub String);

/// Checks tokens.
pub struct Verifier {
    secret: Option<DecodingKey>,
    public: Option<(Algorithm, DecodingKey)>,
    audience: Option<String>,
    issuer: Option<String>,
}

impl Verifier {
    pub fn new(config: &AuthConfig) -> Result<Verifier, AuthSetupError> {
        let secret = match &config.secret {
            Some(bytes) if bytes.is_empty() => return Err(AuthSetupError::EmptySecret),
            Some(bytes) => Some(DecodingKey::from_secret(bytes).map_err(|_| AuthSetupError::EmptySecret)?),
            None => None,
        };
        let public = match &config.public_key_pem {
            Some(pem) => Some(public_key(pem)?),
            None => None,
        };
        Ok(Verifier { secret, public, audience: config.audience.clone(), issuer: config.issuer.clone() })
    }

    /// The algorithms tokens may use.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        self.secret.iter().map(|_| Algorithm::HS256).chain(self.public.iter().map(|(alg, _)| *alg)).collect()
    }

    /// Checks a token and returns what it grants.
    pub fn verify(&self, token: Option<&str>) -> Result<Grant, Unauthorized> {
        let token = token.filter(|t| !t.is_empty()).ok_or(Unauthorized::Missing)?;
        let header = jsonwebtoken::decode_header(token).map_err(|e| Unauthorized::Invalid(describe(e.kind())))?;
        let key = match header.alg {
            Algorithm::HS256 => self.secret.as_ref(),
            alg => self.public.as_ref().filter(|(expected, _)| *expected == alg).map(|(_, key)| key),
        };
        let Some(key) = key else {
            let accepted: Vec<String> = self.algorithms().iter().map(|a| format!("{a:?}")).collect();
            return Err(Unauthorized::Invalid(format!(
                "algorithm {:?} is not accepted here (accepted: {})",
                header.alg,
                accepted.join(", ")
            )));
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        // A configured audience or issuer must be in the token, not merely match when present.
        let mut required = vec!["exp"];
        required.extend(self.audience.as_ref().map(|_| "aud"));
        required.extend(self.issuer.as_ref().map(|_| "iss"));
        validation.set_required_spec_claims(&required);
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| Unauthorized::Invalid(describe(e.kind())))?
            .claims;
        Grant::from_claims(claims)
    }
}

fn public_key(pem: &[u8]) -> Result<(Algorithm, DecodingKey), AuthSetupError> {
    match DecodingKey::from_rsa_pem(pem) {
        Ok(key) => Ok((Algorithm::RS256, key)),
        Err(rsa) => match DecodingKey::from_ec_pem(pem) {
            Ok(key) => Ok((Algorithm::ES256, key)),
            Err(ec) => Err(AuthSetupError::PublicKey(format!("as RSA: {rsa}; as EC: {ec}"))),
        },
    }
}

/// The reason a client sees, in words: fixed texts only (a decoder's message can quote the
/// token, and the reason goes into `WWW-Authenticate`).
fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::ExpiredSignature => "expired (exp is in the past)".into(),
        ErrorKind::ImmatureSignature => "not valid yet (nbf is in the future)".into(),
        ErrorKind::InvalidAudience => "wrong audience (aud)".into(),
        ErrorKind::InvalidIssuer => "wrong issuer (iss)".into(),
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" | "aud" | "iss" | "sub" | "nbf" => format!("the {claim} claim is missing"),
            _ => "a required claim is missing".into(),
        },
        ErrorKind::InvalidClaimFormat(claim) => match claim.as_str() {
            "exp" | "aud" | "iss" | "sub" | "nbf" => format!("the {claim} claim has the wrong type"),
            _ => "a claim has the wrong type".into(),
        },
        ErrorKind::InvalidAlgorithm => "the algorithm does not match the key".into(),
        ErrorKind::Json(_) => "unreadable header or claims (not the JSON a JWT holds)".into(),
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
            "malformed (expected header.payload.signature in base64url)".into()
        }
        _ => "invalid token".into(),
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    /// Required (checked by the validation, which reports it missing in its own words).
    exp: Option<u64>,
    pgevents: Option<GrantClaim>,
}

#[derive(Debug, Default, Deserialize)]
struct GrantClaim {
    #[serde(default)]
    tables: Vec<String>,
    #[serde(default)]
    rows: Map<String, Value>,
}

/// What a valid token allows.
#[derive(Debug, Clone)]
pub struct Grant {
    /// `sub`: the consumer id.
    pub subject: Option<String>,
    tables: Vec<(String, Glob)>,
    rows: Vec<(String, String)>,
    /// `exp`: the stream ends then.
    pub expires_at: SystemTime,
}

impl Grant {
    fn from_claims(claims: Claims) -> Result<Grant, Unauthorized> {
        let exp = claims
            .exp
            .ok_or_else(|| Unauthorized::Invalid(describe(&ErrorKind::MissingRequiredClaim("exp".into()))))?;
        // Far beyond any real expiry, and beyond what the clock can add without overflowing.
        let expires_at = UNIX_EPOCH
            .checked_add(Duration::from_secs(exp))
            .filter(|_| exp <= MAX_EXP)
            .ok_or_else(|| Unauthorized::Invalid("the exp claim is out of range".into()))?;
        let grant = claims.pgevents.unwrap_or_default();
        let mut rows = Vec::with_capacity(grant.rows.len());
        for (column, value) in grant.rows {
            match value {
                Value::String(_) | Value::Number(_) | Value::Bool(_) => rows.push((column, value_text(&value))),
                other => {
                    return Err(Unauthorized::Invalid(format!(
                        "pgevents.rows.{column} must be a string, number or boolean, not {other}"
                    )))
                }
            }
        }
        Ok(Grant {
            subject: claims.sub.filter(|s| !s.is_empty()),
            tables: grant.tables.into_iter().map(|t| (t.clone(), Glob::new(&t))).collect(),
            rows,
            expires_at,
        })
    }

    /// Whether the requested `table=` patterns stay within the granted tables: each must be a
    /// table (or a pattern) that one grant covers entirely.
    pub fn authorize(&self, requested: &[String]) -> Result<(), Forbidden> {
        if self.tables.is_empty() {
            return Err(Forbidden("the token grants no tables (claim pgevents.tables)".into()));
        }
        for pattern in requested {
            // A grant glob that matches the pattern's own text covers every table the pattern
            // can match: each `*` of the pattern falls inside a `*` of the grant.
            if !self.tables.iter().any(|(_, glob)| glob.matches(pattern)) {
                let granted: Vec<&str> = self.tables.iter().map(|(t, _)| t.as_str()).collect();
                return Err(Forbidden(format!(
                    "table={pattern} is not granted by the token (pgevents.tables: {})",
                    granted.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Whether the token grants tables at all (a session's token may not: the session's
    /// subscriptions were checked against the owner's privileges when they were made).
    pub fn grants_tables(&self) -> bool {
        !self.tables.is_empty()
    }

    /// Whether the token allows this event: its table is granted and, with row grants, its new
    /// row or its old row has every granted column equal to the granted value.
    pub fn allows(&self, frame: &EventFrame) -> bool {
        self.allows_table(frame) && self.allows_rows(frame)
    }

    /// Whether the event's table is granted.
    pub fn allows_table(&self, frame: &EventFrame) -> bool {
        self.tables.iter().any(|(_, glob)| glob.matches(&frame.event.table_name))
    }

    /// Whether the row grants (if any) allow the event: its new row or its old row has every
    /// granted column equal to the granted value. An event without rows (a truncate) passes only
    /// without row grants.
    pub fn allows_rows(&self, frame: &EventFrame) -> bool {
        if self.rows.is_empty() {
            return true;
        }
        let event = &frame.event;
        let row_matches =
            |row: &Map<String, Value>| self.rows.iter().all(|(c, v)| row.get(c).is_some_and(|x| value_text(x) == *v));
        row_matches(&event.new) || row_matches(&event.old)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use pgevents_event::Event;
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"test secret of enough length";

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    fn token(claims: Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET).unwrap()).unwrap()
    }

    fn verifier(audience: Option<&str>) -> Verifier {
        let config =
            AuthConfig { secret: Some(SECRET.to_vec()), audience: audience.map(str::to_owned), ..Default::default() };
        Verifier::new(&config).unwrap()
    }

    fn frame(table: &str, new: Value, old: Value) -> EventFrame {
        let event: Event = serde_json::from_value(json!({
            "table_name": table, "action": "U", "old": old, "new": new, "diff": {}, "id": 1,
            "lsn": "0/1", "xid": 1, "commit_time": "t", "seq": 0
        }))
        .unwrap();
        EventFrame { event, pk: Some("1".into()), sse: Bytes::new() }
    }

    #[test]
    fn checks_signature_expiry_audience_and_presence() {
        let v = verifier(Some("app"));
        let good = json!({"sub": "u1", "exp": now() + 600, "aud": "app", "pgevents": {"tables": ["public.*"]}});
        assert_eq!(v.verify(Some(&token(good.clone()))).unwrap().subject.as_deref(), Some("u1"));
        assert_eq!(v.verify(None).unwrap_err(), Unauthorized::Missing);
        let forged =
            encode(&Header::new(Algorithm::HS256), &good, &EncodingKey::from_secret(b"another secret").unwrap())
                .unwrap();
        assert!(v.verify(Some(&forged)).unwrap_err().to_string().contains("bad signature"));
        let expired = json!({"exp": now() - 3600, "aud": "app"});
        assert!(v.verify(Some(&token(expired))).unwrap_err().to_string().contains("expired"));
        let wrong_aud = json!({"exp": now() + 600, "aud": "other"});
        assert!(v.verify(Some(&token(wrong_aud))).unwrap_err().to_string().contains("wrong audience"));
        let no_exp = json!({"aud": "app"});
        let err = v.verify(Some(&token(no_exp))).unwrap_err().to_string();
        assert!(err.contains("exp claim is missing"), "{err}");
        assert!(v.verify(Some("garbage")).unwrap_err().to_string().contains("malformed"));
        let not_yet = json!({"exp": now() + 600, "nbf": now() + 300, "aud": "app"});
        assert!(v.verify(Some(&token(not_yet))).unwrap_err().to_string().contains("not valid yet"));
    }

    #[test]
    fn grants_tables_and_rows() {
        let v = verifier(None);
        let claims = json!({"exp": now() + 600, "pgevents": {"tables": ["public.orders", "shop.*"], "rows": {"customer_id": 42}}});
        let grant = v.verify(Some(&token(claims))).unwrap();
        assert!(grant.authorize(&[]).is_ok());
        assert!(grant.authorize(&["public.orders".into(), "shop.items_*".into()]).is_ok());
        assert!(grant.authorize(&["public.users".into()]).unwrap_err().0.contains("table=public.users is not granted"));
        assert!(grant.authorize(&["public.*".into()]).is_err(), "a wider pattern than the grant");
        assert!(grant.allows(&frame("public.orders", json!({"customer_id": 42}), json!({}))));
        assert!(grant.allows(&frame("public.orders", json!({"customer_id": 7}), json!({"customer_id": "42"}))));
        assert!(!grant.allows(&frame("public.orders", json!({"customer_id": 7}), json!({}))));
        assert!(!grant.allows(&frame("public.users", json!({"customer_id": 42}), json!({}))));
        let nothing = v.verify(Some(&token(json!({"exp": now() + 600})))).unwrap();
        assert!(nothing.authorize(&[]).unwrap_err().0.contains("grants no tables"));
        let bad_row = json!({"exp": now() + 600, "pgevents": {"tables": ["*"], "rows": {"a": [1]}}});
        assert!(v.verify(Some(&token(bad_row))).unwrap_err().to_string().contains("pgevents.rows.a"));
    }

    #[test]
    fn a_configured_audience_or_issuer_must_be_in_the_token() {
        let config = AuthConfig {
            secret: Some(SECRET.to_vec()),
            audience: Some("app".into()),
            issuer: Some("https://id.example".into()),
            ..Default::default()
        };
        let v = Verifier::new(&config).unwrap();
        let both = json!({"exp": now() + 600, "aud": "app", "iss": "https://id.example"});
        assert!(v.verify(Some(&token(both))).is_ok());
        let no_aud = json!({"exp": now() + 600, "iss": "https://id.example"});
        assert!(v.verify(Some(&token(no_aud))).unwrap_err().to_string().contains("aud claim is missing"));
        let no_iss = json!({"exp": now() + 600, "aud": "app"});
        assert!(v.verify(Some(&token(no_iss))).unwrap_err().to_string().contains("iss claim is missing"));
    }

    #[test]
    fn an_exp_past_the_clock_is_refused_not_a_panic() {
        let v = verifier(None);
        for exp in [u64::MAX, 1 << 63, MAX_EXP + 1] {
            let err = v.verify(Some(&token(json!({"exp": exp})))).unwrap_err();
            assert!(err.to_string().contains("exp claim is out of range"), "{exp}: {err}");
        }
        assert!(v.verify(Some(&token(json!({"exp": MAX_EXP})))).is_ok());
    }

    #[test]
    fn reasons_never_quote_the_token() {
        use base64::Engine as _;
        let b64 = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
        let v = verifier(None);
        let evil = "\r\nContent-Type: text/html\r\n\r\n<script>alert(1)</script>";
        for header in [format!(r#"{{"alg":"{evil}","typ":"JWT"}}"#), format!(r#"{{"alg":"HS256","kid":{evil}}}"#)] {
            let forged = format!("{}.{}.sig", b64(&header), b64(r#"{"exp":1}"#));
            let reason = v.verify(Some(&forged)).unwrap_err().to_string();
            assert!(!reason.contains("script") && !reason.contains("Content-Type"), "{reason}");
            assert!(reason.chars().all(|c| (' '..='~').contains(&c)), "{reason:?}");
        }
        let claims = format!("{}.{}.sig", b64(r#"{"alg":"HS256"}"#), b64(&format!(r#"{{"exp":"{evil}"}}"#)));
        let reason = v.verify(Some(&claims)).unwrap_err().to_string();
        assert!(!reason.contains("script"), "{reason}");
    }

    #[test]
    fn row_grants_apply_without_table_grants() {
        let v = verifier(None);
        let rows_only =
            v.verify(Some(&token(json!({"exp": now() + 600, "pgevents": {"rows": {"owner": "ann"}}})))).unwrap();
        assert!(!rows_only.grants_tables());
        assert!(rows_only.allows_rows(&frame("public.notes", json!({"owner": "ann"}), json!({}))));
        assert!(!rows_only.allows_rows(&frame("public.notes", json!({"owner": "bob"}), json!({}))));
    }

    #[test]
    fn a_token_is_checked_only_with_the_key_of_its_algorithm() {
        let v = verifier(None);
        let mut header = Header::new(Algorithm::HS384);
        header.alg = Algorithm::HS384;
        let other = encode(&header, &json!({"exp": now() + 600}), &EncodingKey::from_secret(SECRET).unwrap()).unwrap();
        assert!(v.verify(Some(&other)).unwrap_err().to_string().contains("HS384 is not accepted"));
    }
}
