//! Received messages copied into shared chunks, so that decoding one allocates nothing.
//!
//! prost decodes a `bytes` field out of a `Bytes` input as a slice of it, but out of a
//! borrowed `&[u8]` as a fresh buffer, whose first clone (the backend's request, the echo's
//! push) allocates again to become shared. Copying each message into the tail of a chunk
//! that many messages share turns both into a reference count.
//!
//! A body keeps its whole chunk alive, so chunks are small: a message that outlives its
//! neighbours (a push no client acks) holds at most [`CHUNK`] bytes, about what its link's
//! buffers hold anyway. Once every message of a chunk is dropped, the chunk is reused.

use bytes::{Bytes, BytesMut};

pub const CHUNK: usize = 8 * 1024;

#[derive(Debug)]
pub struct Arena {
    tail: BytesMut,
}

impl Default for Arena {
    fn default() -> Self {
        Arena {
            tail: BytesMut::with_capacity(CHUNK),
        }
    }
}

impl Arena {
    /// `message` as bytes whose clones and slices allocate nothing. A message over a quarter
    /// chunk gets its own buffer: it would waste the rest of one.
    pub fn copy(&mut self, message: &[u8]) -> Bytes {
        if message.len() > CHUNK / 4 {
            return Bytes::copy_from_slice(message);
        }
        // Reuses the chunk when no message holds it any more; otherwise starts a new one of
        // the same size.
        self.tail.reserve(message.len());
        self.tail.extend_from_slice(message);
        self.tail.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_share_a_chunk_until_it_is_full() {
        let mut a = Arena::default();
        let m1 = a.copy(b"hello");
        let m2 = a.copy(b"world");
        assert_eq!((&m1[..], &m2[..]), (&b"hello"[..], &b"world"[..]));
        assert_eq!(m2.as_ptr(), m1.as_ptr().wrapping_add(5), "one chunk");
        let filler = vec![0u8; CHUNK / 4];
        let mut last = a.copy(&filler);
        while last.as_ptr() > m1.as_ptr() && last.as_ptr() < m1.as_ptr().wrapping_add(CHUNK) {
            last = a.copy(&filler);
        }
        assert_eq!(
            &last[..],
            &filler[..],
            "a full chunk gives way to a new one"
        );
    }

    #[test]
    fn a_large_message_has_its_own_buffer() {
        let mut a = Arena::default();
        let small = a.copy(b"x");
        let large = a.copy(&vec![1u8; CHUNK]);
        assert_eq!(large.len(), CHUNK);
        assert_eq!(a.copy(b"y").as_ptr(), small.as_ptr().wrapping_add(1));
    }
}
