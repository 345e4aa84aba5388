//! JWT authentication of the upgrade request.
//!
//! The algorithm is pinned by configuration (HS256 with a shared secret, or RS256/ES256 with a
//! public key), so a token cannot choose how it is checked. `exp` is always required; `iss` and
//! `aud` are checked when configured. Identity comes only from the claims, never from defaults:
//! a token without `biz_id` or `user_id` is refused.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Deserializer, Serialize};

/// Who is on the other end of a link. The strings are boxed, not `String`s: every idle link
/// holds one identity, and without the two capacities it fits a smaller allocation (56 bytes
/// with its `Arc` counts, not 72).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub biz_id: u64,
    pub user_id: Box<str>,
    pub device_id: Box<str>,
}

/// A token that passed: who it names, and until when (unix seconds) a link may live on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub who: Identity,
    pub exp: u64,
    /// Rooms the link joins at connect (the `rooms` claim).
    pub rooms: Vec<String>,
}

#[derive(Debug, Deserialize, Serialize)]
struct Claims {
    biz_id: u64,
    /// A string; numbers are accepted too so tokens minted for the predecessor keep working.
    #[serde(deserialize_with = "string_or_number")]
    user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_id: Option<String>,
    exp: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rooms: Vec<String>,
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        S(String),
        N(u64),
    }
    Ok(match Either::deserialize(d)? {
        Either::S(s) => s,
        Either::N(n) => n.to_string(),
    })
}

/// How tokens are checked.
#[derive(Debug, Clone)]
pub enum KeySource {
    Secret(Vec<u8>),
    /// PEM public key; the algorithm is RS256 for RSA keys and ES256 for EC keys.
    PublicKeyPem(Vec<u8>),
}

pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Invalid(String),
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Missing => f.write_str("no token: send Authorization: Bearer or ?token="),
            AuthError::Invalid(why) => write!(f, "invalid token: {why}"),
        }
    }
}

const MAX_ID_LEN: usize = 128;

/// What a user or device id may be: 1..=128 bytes, no `:` (link ids join ids with it) and no
/// control characters (ids reach logs and terminals). Shared by tokens and the push API.
pub fn check_id(name: &str, v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > MAX_ID_LEN || v.contains(':') || v.chars().any(char::is_control) {
        return Err(format!(
            "{name} must be 1..={MAX_ID_LEN} bytes without ':' or control characters"
        ));
    }
    Ok(())
}

/// What a room name may be (DESIGN §4a): 1..=128 bytes, no control characters (names reach
/// logs). Shared by tokens' `rooms` claim and the rooms API.
pub fn check_room(room: &str) -> Result<(), String> {
    if room.is_empty() || room.len() > MAX_ID_LEN || room.chars().any(char::is_control) {
        return Err(format!(
            "a room name must be 1..={MAX_ID_LEN} bytes without control characters"
        ));
    }
    Ok(())
}

/// Why no token could ever be checked with the configured key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the JWT secret must be at least 16 bytes")]
    ShortSecret,
    #[error("public key is neither RSA nor EC PEM: {0}")]
    NotAPublicKey(#[source] jsonwebtoken::errors::Error),
}

impl Verifier {
    pub fn new(
        source: &KeySource,
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Result<Verifier, KeyError> {
        let (key, alg) = match source {
            KeySource::Secret(s) => {
                if s.len() < 16 {
                    return Err(KeyError::ShortSecret);
                }
                (DecodingKey::from_secret(s), Algorithm::HS256)
            }
            KeySource::PublicKeyPem(pem) => {
                if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
                    (k, Algorithm::RS256)
                } else {
                    let k = DecodingKey::from_ec_pem(pem).map_err(KeyError::NotAPublicKey)?;
                    (k, Algorithm::ES256)
                }
            }
        };
        let mut validation = Validation::new(alg);
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = 30;
        // A token minted for later is not valid yet.
        validation.validate_nbf = true;
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        match audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        Ok(Verifier { key, validation })
    }

    pub fn verify(&self, token: Option<&str>) -> Result<Verified, AuthError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let c = data.claims;
        let device_id = c
            .device_id
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "default".into());
        for (name, v) in [("user_id", &c.user_id), ("device_id", &device_id)] {
            check_id(name, v).map_err(AuthError::Invalid)?;
        }
        for room in &c.rooms {
            check_room(room).map_err(|e| AuthError::Invalid(format!("rooms: {e}")))?;
        }
        let who = Identity {
            biz_id: c.biz_id,
            user_id: c.user_id.into(),
            device_id: device_id.into(),
        };
        Ok(Verified {
            who,
            exp: c.exp,
            rooms: c.rooms,
        })
    }
}

/// Mints an HS256 token; used by `ringway token`, the load generator and tests.
pub fn mint_hs256(secret: &[u8], who: &Identity, ttl_secs: u64) -> String {
    mint_hs256_in(secret, who, ttl_secs, &[])
}

/// As [`mint_hs256`], with a `rooms` claim: the link joins them at connect.
pub fn mint_hs256_in(secret: &[u8], who: &Identity, ttl_secs: u64, rooms: &[String]) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        + ttl_secs;
    let claims = Claims {
        biz_id: who.biz_id,
        user_id: who.user_id.to_string(),
        device_id: Some(who.device_id.to_string()),
        exp,
        rooms: rooms.to_vec(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("HS256 encoding cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123";

    fn alice() -> Identity {
        Identity {
            biz_id: 7,
            user_id: "alice".into(),
            device_id: "phone".into(),
        }
    }

    fn hs(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn far() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600
    }

    #[test]
    fn good_token() {
        let v = Verifier::new(&KeySource::Secret(SECRET.into()), None, None).unwrap();
        let minted = v.verify(Some(&mint_hs256(SECRET, &alice(), 60))).unwrap();
        assert_eq!(minted.who, alice());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            (now + 59..=now + 61).contains(&minted.exp),
            "exp is the token's"
        );
        let t = hs(serde_json::json!({"biz_id": 1, "user_id": 42, "exp": far()}));
        let id = v.verify(Some(&t)).unwrap().who;
        assert_eq!((&*id.user_id, &*id.device_id), ("42", "default"));
    }

    #[test]
    fn bad_tokens() {
        let v = Verifier::new(&KeySource::Secret(SECRET.into()), Some("ringway"), None).unwrap();
        assert_eq!(v.verify(None), Err(AuthError::Missing));
        let invalid = |t: &str| matches!(v.verify(Some(t)), Err(AuthError::Invalid(_)));
        assert!(invalid("not-a-jwt"));
        assert!(
            invalid(&hs(
                serde_json::json!({"biz_id": 1, "user_id": "a", "iss": "ringway"})
            )),
            "exp required"
        );
        assert!(
            invalid(&hs(
                serde_json::json!({"biz_id": 1, "user_id": "a", "exp": 1, "iss": "ringway"})
            )),
            "expired"
        );
        assert!(
            invalid(&hs(
                serde_json::json!({"user_id": "a", "exp": far(), "iss": "ringway"})
            )),
            "biz_id required"
        );
        assert!(
            invalid(&hs(
                serde_json::json!({"biz_id": 1, "user_id": "a", "exp": far()})
            )),
            "iss required"
        );
        assert!(invalid(&hs(
            serde_json::json!({"biz_id": 1, "user_id": "a:b", "exp": far(), "iss": "ringway"})
        )));
        assert!(
            invalid(&hs(
                serde_json::json!({"biz_id": 1, "user_id": "a\nb\u{1b}", "exp": far(), "iss": "ringway"})
            )),
            "control characters in ids"
        );
        assert!(
            invalid(&hs(
                serde_json::json!({"biz_id": 1, "user_id": "a", "exp": far(), "nbf": far() - 600, "iss": "ringway"})
            )),
            "not valid before nbf"
        );
        assert!(
            !invalid(&hs(
                serde_json::json!({"biz_id": 1, "user_id": "a", "exp": far(), "nbf": 1, "iss": "ringway"})
            )),
            "an nbf in the past is fine"
        );
        let other = mint_hs256(b"another-secret-of-16", &alice(), 60);
        assert!(invalid(&other), "wrong secret");
        // alg=none and HS384 are refused: the algorithm is pinned.
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &serde_json::json!({"biz_id": 1, "user_id": "a", "exp": far(), "iss": "ringway"}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(invalid(&hs384));
    }

    #[test]
    fn public_key_algorithms_are_pinned_by_the_key() {
        let claims = serde_json::json!({"biz_id": 3, "user_id": "u", "exp": far()});
        let cases: [(Algorithm, &[u8], &[u8]); 2] = [
            (
                Algorithm::ES256,
                include_bytes!("../tests/fixtures/ec-private.pem"),
                include_bytes!("../tests/fixtures/ec-public.pem"),
            ),
            (
                Algorithm::RS256,
                include_bytes!("../tests/fixtures/rsa-private.pem"),
                include_bytes!("../tests/fixtures/rsa-public.pem"),
            ),
        ];
        for (alg, private, public) in cases {
            let key = match alg {
                Algorithm::ES256 => EncodingKey::from_ec_pem(private).unwrap(),
                _ => EncodingKey::from_rsa_pem(private).unwrap(),
            };
            let token = jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap();
            let v = Verifier::new(&KeySource::PublicKeyPem(public.to_vec()), None, None).unwrap();
            assert_eq!(v.verify(Some(&token)).unwrap().who.biz_id, 3, "{alg:?}");
            // Algorithm confusion: an HS256 token "signed" with the public key as secret.
            let forged = jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(public),
            )
            .unwrap();
            assert!(
                v.verify(Some(&forged)).is_err(),
                "{alg:?} must refuse HS256"
            );
        }
        assert!(
            Verifier::new(&KeySource::PublicKeyPem(b"not a key".to_vec()), None, None).is_err()
        );
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(Verifier::new(&KeySource::Secret(b"short".to_vec()), None, None).is_err());
    }
}
