//! The HTTP push API's request body, checked without I/O: what `/v1/push` accepts and the
//! reason it gives for what it refuses. Kept apart from the handler so the fuzzer reaches it.

use base64::Engine;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushRequest {
    #[serde(deserialize_with = "biz_id")]
    biz_id: u64,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    user_ids: Vec<String>,
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    key: String,
    /// Standard base64.
    #[serde(default)]
    body: String,
    #[serde(default)]
    ephemeral: bool,
}

/// A push request that names a key, at least one receiver and a decodable body.
#[derive(Debug, PartialEq, Eq)]
pub struct ValidPush {
    pub biz_id: u64,
    pub user_ids: Vec<String>,
    pub device_id: Option<String>,
    pub key: String,
    pub body: Vec<u8>,
    /// No stream, no ack, no retransmit, no report.
    pub ephemeral: bool,
}

/// Checks a `/v1/push` body; the error is the 400 answer's text.
pub fn parse(body: &[u8]) -> Result<ValidPush, String> {
    let req: PushRequest = serde_json::from_slice(body).map_err(|e| format!("bad JSON: {e}"))?;
    if req.key.is_empty() && !req.ephemeral {
        return Err(
            "key is required (clients dedup and ack by it; only ephemeral pushes may omit it)"
                .into(),
        );
    }
    let mut users = req.user_ids;
    users.extend(req.user_id);
    let users = crate::distinct_receivers(users);
    if users.is_empty() {
        return Err("name a receiver: user_id or user_ids".into());
    }
    for u in &users {
        crate::auth::check_id("user_id", u)?;
    }
    if let Some(d) = req.device_id.as_deref().filter(|d| !d.is_empty()) {
        crate::auth::check_id("device_id", d)?;
    }
    let payload = base64::engine::general_purpose::STANDARD
        .decode(req.body.as_bytes())
        .map_err(|e| format!("body must be standard base64: {e}"))?;
    Ok(ValidPush {
        biz_id: req.biz_id,
        user_ids: users,
        device_id: req.device_id.filter(|d| !d.is_empty()),
        key: req.key,
        body: payload,
        ephemeral: req.ephemeral,
    })
}

/// `biz_id` as a number or, as proto3 JSON writes 64-bit integers, a string.
pub fn biz_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        Num(u64),
        Str(String),
    }
    match N::deserialize(d)? {
        N::Num(n) => Ok(n),
        N::Str(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses_with_reasons() {
        let ok = parse(
            br#"{"biz_id":"7","user_id":"a","user_ids":["b","","a","b"],"key":"k","body":"aGk="}"#,
        )
        .unwrap();
        assert_eq!(ok.user_ids, ["b", "a"]);
        assert_eq!(
            (ok.biz_id, &ok.body[..], ok.ephemeral),
            (7, &b"hi"[..], false)
        );
        let typing = parse(br#"{"biz_id":1,"user_id":"a","ephemeral":true}"#).unwrap();
        assert!(typing.ephemeral && typing.key.is_empty());
        let why = |b: &str| parse(b.as_bytes()).unwrap_err();
        assert!(why(r#"{"biz_id":1,"user_id":"a","key":""}"#).starts_with("key is required"));
        assert!(why(r#"{"biz_id":1,"key":"k"}"#).starts_with("name a receiver"));
        assert!(why(r#"{"biz_id":1,"user_id":"a","key":"k","body":"!"}"#).starts_with("body must"));
        assert!(why(r#"{"biz_id":1,"user_id":"a","key":"k","x":1}"#).starts_with("bad JSON"));
        assert!(why(r#"{"biz_id":"-1","user_id":"a","key":"k"}"#).starts_with("bad JSON"));
        let forged = r#"{"biz_id":1,"user_id":"a\n\u001b[31mINFO forged","key":"k"}"#;
        assert!(why(forged).starts_with("user_id must be"));
    }
}
