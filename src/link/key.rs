//! A message key held once however many places need it.
//!
//! An upstream message's key is needed by its request, the idempotency store's entry and expiry
//! row, the store's update, the ack, and with the echo backend the push that carries it back;
//! each used to own a copy. The store scopes a key to its sender as `user \0 key`, so that one
//! string is built at once and the plain key is its tail: one allocation per message.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// A shared key: `key` or, scoped to a sender, `user \0 key`. Derefs to, compares as and
/// hashes as the key alone (so maps keyed by it are searched with a `&str`); the idempotency
/// store keys by [`MessageKey::scoped_text`] instead.
#[derive(Clone)]
pub struct MessageKey {
    text: Arc<str>,
    /// Where the key starts in `text` (0 when unscoped).
    start: u32,
}

impl MessageKey {
    /// `key` scoped to `user`. User ids hold no control characters, so the pair is
    /// unambiguous.
    pub fn scoped(user: &str, key: &str) -> Self {
        thread_local! {
            /// Where the pair is put together: an `Arc<str>` is made from a `str` in one
            /// allocation, and from a `String` in two.
            static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
        }
        let text = SCRATCH.with_borrow_mut(|text| {
            text.clear();
            text.push_str(user);
            text.push('\0');
            text.push_str(key);
            Arc::from(text.as_str())
        });
        MessageKey {
            text,
            start: (user.len() + 1) as u32,
        }
    }

    /// The user a scoped key belongs to.
    pub fn user(&self) -> Option<&str> {
        let start = self.start as usize;
        (start > 0).then(|| &self.text[..start - 1])
    }

    /// The scoped form, `user \0 key` (the key alone when unscoped).
    pub fn scoped_text(&self) -> &Arc<str> {
        &self.text
    }
}

impl From<String> for MessageKey {
    fn from(key: String) -> Self {
        MessageKey::from(key.as_str())
    }
}

impl From<&str> for MessageKey {
    fn from(key: &str) -> Self {
        MessageKey {
            text: key.into(),
            start: 0,
        }
    }
}

impl Deref for MessageKey {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text[self.start as usize..]
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
    fn a_scoped_key_reads_as_its_key_and_shares_one_string() {
        let k = MessageKey::scoped("alice", "m1");
        assert_eq!(&*k, "m1");
        assert_eq!(&**k.scoped_text(), "alice\0m1");
        assert_eq!(k.user(), Some("alice"));
        assert_eq!(MessageKey::from("p1").user(), None);
        let copy = k.clone();
        assert!(Arc::ptr_eq(copy.scoped_text(), k.scoped_text()));
        assert_eq!(&*MessageKey::from("p1"), "p1");
        assert_eq!(&**MessageKey::from("p1").scoped_text(), "p1");
    }
}
