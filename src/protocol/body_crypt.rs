//! Optional body encryption between clients and the gateway (DESIGN §2), on top of TLS for
//! operators who want `body` sealed end to end even where TLS ends early (a load balancer).
//!
//! AES-256-GCM with one key per biz, chosen because browsers have it in WebCrypto: a sealed
//! body is a random 12-byte nonce followed by the ciphertext and its 16-byte tag. Bizs without
//! a key pass bodies through untouched. Random nonces are safe for about 2^32 messages per
//! key; rotate keys well before that. Empty bodies stay empty in both directions.

use aes_gcm::aead::{Aead, AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use bytes::Bytes;
use rand::RngCore;

use crate::FastMap;

const NONCE: usize = 12;
const TAG: usize = 16;
/// What sealing adds to a body.
pub const SEAL_OVERHEAD: usize = NONCE + TAG;

/// The keys of the bizs whose bodies are sealed.
#[derive(Clone, Default)]
pub struct BodyKeys(FastMap<u64, Aes256Gcm>);

impl std::fmt::Debug for BodyKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// A `--body-key` spec that cannot be used, said in the flag's terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySpecError {
    #[error("--body-key {0:?}: expected BIZ=BASE64KEY")]
    Form(String),
    #[error("--body-key: {0:?} is not a biz id")]
    Biz(String),
    #[error("--body-key for biz {biz}: not base64: {why}")]
    Base64 { biz: u64, why: String },
    #[error("--body-key for biz {biz}: need 32 bytes, got {len}")]
    Length { biz: u64, len: usize },
    #[error("--body-key: biz {0} named twice")]
    Twice(u64),
}

/// A sealed body that is not one: too short, or it fails authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenError;

impl BodyKeys {
    /// Parses `BIZ=KEY` specs, KEY being 32 bytes in standard base64.
    pub fn parse(specs: &[String]) -> Result<BodyKeys, KeySpecError> {
        let mut keys = FastMap::default();
        for spec in specs {
            let (biz, key) = spec
                .split_once('=')
                .ok_or_else(|| KeySpecError::Form(spec.clone()))?;
            let biz: u64 = biz
                .trim()
                .parse()
                .map_err(|_| KeySpecError::Biz(biz.to_owned()))?;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(key.trim())
                .map_err(|e| KeySpecError::Base64 {
                    biz,
                    why: e.to_string(),
                })?;
            let cipher = Aes256Gcm::new_from_slice(&raw).map_err(|_| KeySpecError::Length {
                biz,
                len: raw.len(),
            })?;
            if keys.insert(biz, cipher).is_some() {
                return Err(KeySpecError::Twice(biz));
            }
        }
        Ok(BodyKeys(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The plain body of a client's message; bodies of bizs without a key pass as they are.
    pub fn open(&self, biz_id: u64, body: Bytes) -> Result<Bytes, OpenError> {
        let Some(cipher) = self.0.get(&biz_id) else {
            return Ok(body);
        };
        if body.is_empty() {
            return Ok(body);
        }
        if body.len() < NONCE + TAG {
            return Err(OpenError);
        }
        let (nonce, sealed) = body.split_at(NONCE);
        let nonce: [u8; NONCE] = nonce.try_into().expect("split at the nonce length");
        cipher
            .decrypt(&Nonce::from(nonce), sealed)
            .map(Bytes::from)
            .map_err(|_| OpenError)
    }

    /// The body as the client receives it: sealed under a fresh nonce when the biz has a key.
    pub fn seal(&self, biz_id: u64, body: Bytes) -> Bytes {
        let Some(cipher) = self.0.get(&biz_id) else {
            return body;
        };
        if body.is_empty() {
            return body;
        }
        // Nonces from the thread's CSPRNG (seeded by the OS, reseeded as it goes): unique with
        // overwhelming odds, and no syscall per message.
        let mut nonce = [0u8; NONCE];
        rand::rng().fill_bytes(&mut nonce);
        // Sealed in place in the one buffer the client gets: nonce, ciphertext, tag.
        let mut out = Vec::with_capacity(NONCE + body.len() + TAG);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        let tag = cipher
            .encrypt_in_place_detached(&Nonce::from(nonce), b"", &mut out[NONCE..])
            .expect("AES-GCM encrypts any length a frame can have");
        out.extend_from_slice(&tag);
        out.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> BodyKeys {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        BodyKeys::parse(&[format!("1={key}")]).unwrap()
    }

    #[test]
    fn seal_then_open_and_other_bizs_pass_through() {
        let k = keys();
        let sealed = k.seal(1, Bytes::from_static(b"secret"));
        assert_eq!(sealed.len(), NONCE + 6 + TAG);
        assert_ne!(&sealed[NONCE..NONCE + 6], b"secret");
        assert_eq!(k.open(1, sealed.clone()).unwrap(), &b"secret"[..]);
        // Fresh nonce every time.
        assert_ne!(k.seal(1, Bytes::from_static(b"secret")), sealed);
        assert_eq!(k.seal(2, Bytes::from_static(b"plain")), &b"plain"[..]);
        assert_eq!(
            k.open(2, Bytes::from_static(b"plain")).unwrap(),
            &b"plain"[..]
        );
        assert_eq!(k.seal(1, Bytes::new()), Bytes::new());
    }

    #[test]
    fn tampered_short_or_foreign_bodies_are_refused() {
        let k = keys();
        let mut sealed = k.seal(1, Bytes::from_static(b"secret")).to_vec();
        sealed[NONCE] ^= 1;
        assert_eq!(k.open(1, sealed.into()), Err(OpenError));
        assert_eq!(k.open(1, Bytes::from_static(b"short")), Err(OpenError));
        let other = BodyKeys::parse(&[format!(
            "1={}",
            base64::engine::general_purpose::STANDARD.encode([8u8; 32])
        )])
        .unwrap();
        let sealed = other.seal(1, Bytes::from_static(b"x"));
        assert_eq!(k.open(1, sealed), Err(OpenError));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let err = |s: &str| BodyKeys::parse(&[s.to_owned()]).unwrap_err().to_string();
        assert!(err("nokey").contains("BIZ=BASE64KEY"));
        assert!(err("x=AAAA").contains("not a biz id"));
        assert!(err("1=!!").contains("not base64"));
        assert!(err("1=AAAA").contains("need 32 bytes"));
        let key = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        let twice = BodyKeys::parse(&[format!("1={key}"), format!("1={key}")]);
        assert_eq!(twice.unwrap_err(), KeySpecError::Twice(1));
        assert!(format!("{:?}", keys()).contains('1'));
    }
}
