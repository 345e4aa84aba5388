//! A message key, cheap to hold in the several places that need it.
//!
//! An upstream message's key is needed by its request, the idempotency store's update, the ack,
//! and with the echo backend the push that carries it back; a push's key by every link that
//! holds the push and by its user's stream. Client keys are mostly UUIDs (36 bytes), so a key
//! up to [`INLINE`] bytes is kept inline and copying it costs no allocation: an echoed message
//! allocates nothing. A longer key is shared behind one `Arc`.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// The longest key kept inline: a UUID with room to spare. With its length and the variant's
/// tag, a key is 40 bytes (24 when every key was shared): the price of copying a short key
/// where an `Arc` would have been cloned.
const INLINE: usize = 38;

/// A key: derefs to, compares as and hashes as its text, so maps keyed by it are searched
/// with a `&str`.
#[derive(Clone)]
pub struct MessageKey(Repr);

#[derive(Clone)]
enum Repr {
    /// The first `len` bytes of `bytes` are the key's text, copied from a `str`.
    Inline {
        len: u8,
        bytes: [u8; INLINE],
    },
    Shared(Arc<str>),
}

impl From<&str> for MessageKey {
    fn from(key: &str) -> Self {
        if key.len() > INLINE {
            return MessageKey(Repr::Shared(key.into()));
        }
        let mut bytes = [0; INLINE];
        bytes[..key.len()].copy_from_slice(key.as_bytes());
        MessageKey(Repr::Inline {
            len: key.len() as u8,
            bytes,
        })
    }
}

impl From<String> for MessageKey {
    fn from(key: String) -> Self {
        MessageKey::from(key.as_str())
    }
}

impl Deref for MessageKey {
    type Target = str;
    fn deref(&self) -> &str {
        match &self.0 {
            // SAFETY: the bytes were copied whole from a `str` (`From<&str>`), so they are
            // valid UTF-8.
            Repr::Inline { len, bytes } => unsafe {
                std::str::from_utf8_unchecked(&bytes[..*len as usize])
            },
            Repr::Shared(text) => text,
        }
    }
}

impl PartialEq for MessageKey {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for MessageKey {}

impl Hash for MessageKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self).hash(state)
    }
}

impl Borrow<str> for MessageKey {
    fn borrow(&self) -> &str {
        self
    }
}

impl AsRef<str> for MessageKey {
    fn as_ref(&self) -> &str {
        self
    }
}

impl fmt::Debug for MessageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl fmt::Display for MessageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_reads_as_its_text_inline_or_shared() {
        let uuid = "0b7c5a52-3c3e-4a8f-9d8e-2f0a6c1b9e11";
        let long = "k".repeat(INLINE + 1);
        for text in ["", "m1", uuid, &"é".repeat(INLINE / 2), &long] {
            let k = MessageKey::from(text);
            assert_eq!(&*k, text);
            assert_eq!(k.clone(), k);
            assert_eq!(k, MessageKey::from(text.to_owned()));
        }
        assert!(matches!(MessageKey::from(uuid).0, Repr::Inline { .. }));
        assert!(matches!(MessageKey::from(long.as_str()).0, Repr::Shared(_)));
        assert_eq!(std::mem::size_of::<MessageKey>(), 40);
    }
}
