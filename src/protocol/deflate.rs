//! permessage-deflate (RFC 7692), sans-IO: the negotiation and the per-message transforms.
//!
//! A compression context costs a few hundred KiB (the inflate side alone keeps a 32 KiB
//! window), which is more than everything else a link owns. So by default the gateway answers
//! every offer with `server_no_context_takeover; client_no_context_takeover` (the RFC lets a
//! server add both to any offer): each message then stands alone and one pair of contexts per
//! core serves all its links. `--deflate-takeover` keeps a context per link and direction for
//! better ratios on chatty links, at that memory cost.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The four bytes a sync flush ends with; the sender strips them, the receiver adds them back.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// How the gateway answers offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflatePolicy {
    /// Messages shorter than this go out uncompressed: below a few hundred bytes deflate's
    /// output is barely smaller and costs CPU on both ends.
    pub min_bytes: usize,
    /// Keep a sliding window per link across messages (both directions, where the client
    /// allows it).
    pub takeover: bool,
}

/// What both sides agreed on for one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Agreed {
    /// The gateway keeps its compression context between messages.
    pub server_takeover: bool,
    /// The client keeps its context, so the gateway's inflater must keep the window too.
    pub client_takeover: bool,
    /// The client asked for `server_max_window_bits=N` (9..=15): the gateway compresses with a
    /// 2^N-byte window and says N in its answer. `None`: the full 32 KiB window.
    pub server_window_bits: Option<u8>,
}

impl Agreed {
    fn window_bits(&self) -> u8 {
        self.server_window_bits.unwrap_or(MAX_WINDOW_BITS)
    }

    /// The `Sec-WebSocket-Extensions` value of the 101 answer.
    pub fn response(&self) -> String {
        let mut s = String::from("permessage-deflate");
        if !self.server_takeover {
            s.push_str("; server_no_context_takeover");
        }
        if !self.client_takeover {
            s.push_str("; client_no_context_takeover");
        }
        if let Some(bits) = self.server_window_bits {
            s.push_str(&format!("; server_max_window_bits={bits}"));
        }
        s
    }
}

/// Picks the first acceptable permessage-deflate offer in the client's
/// `Sec-WebSocket-Extensions` value (all its header lines joined by commas). An offer with an
/// unknown or repeated parameter, or one that limits our window to 8 bits (zlib's raw deflate
/// cannot go below 9), is declined and the next one tried, as RFC 7692 §5 asks.
pub fn negotiate(offers: &str, policy: DeflatePolicy) -> Option<Agreed> {
    offers.split(',').find_map(|offer| {
        let mut parts = offer.split(';').map(str::trim);
        if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
            return None;
        }
        let mut seen: Vec<String> = Vec::new();
        let (mut server_no, mut client_no) = (false, false);
        let mut server_window_bits = None;
        for p in parts {
            let (name, value) = match p.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (p, None),
            };
            let name = name.to_ascii_lowercase();
            if seen.contains(&name) {
                return None;
            }
            let bits = |v: &str, lowest: u8| {
                v.parse::<u8>()
                    .ok()
                    .filter(|b| (lowest..=MAX_WINDOW_BITS).contains(b))
            };
            match (name.as_str(), value) {
                ("server_no_context_takeover", None) => server_no = true,
                ("client_no_context_takeover", None) => client_no = true,
                ("server_max_window_bits", Some(v)) => {
                    server_window_bits = Some(bits(v, MIN_WINDOW_BITS)?)
                }
                // Any client window inflates with ours (15 bits).
                ("client_max_window_bits", None) => {}
                ("client_max_window_bits", Some(v)) => _ = bits(v, 8)?,
                _ => return None,
            }
            seen.push(name);
        }
        Some(Agreed {
            server_takeover: policy.takeover && !server_no,
            client_takeover: policy.takeover && !client_no,
            server_window_bits,
        })
    })
}

/// Why a compressed message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// Inflated past the message size limit (a "zip bomb" stops here, not in memory).
    TooLarge,
    Corrupt,
}

/// One link's compression state: contexts it owns when takeover was agreed, none otherwise.
pub struct LinkDeflate {
    pub agreed: Agreed,
    min_bytes: usize,
    compress: Option<Compress>,
    decompress: Option<Decompress>,
}

/// Window sizes a client may ask the gateway to compress with (zlib's raw deflate takes no less
/// than 9 bits; 15 is deflate's whole 32 KiB window).
const MIN_WINDOW_BITS: u8 = 9;
const MAX_WINDOW_BITS: u8 = 15;

/// The core's shared contexts for messages that stand alone; reset after every use. One
/// compressor per window size a client asked for, made when first needed.
struct Shared {
    compress: [Option<Compress>; (MAX_WINDOW_BITS - MIN_WINDOW_BITS + 1) as usize],
    decompress: Decompress,
}

thread_local! {
    static SHARED: RefCell<Shared> = RefCell::new(Shared {
        compress: Default::default(),
        decompress: new_decompress(),
    });
}

/// Level 2: zlib-rs's level 1 is the "quick" strategy (fixed Huffman codes), which saves a
/// quarter as much on a standalone chat message; level 6 saves no more than 2 on them.
fn new_compress(bits: u8) -> Compress {
    Compress::new_with_window_bits(Compression::new(2), false, bits)
}

fn new_decompress() -> Decompress {
    Decompress::new(false)
}

impl LinkDeflate {
    pub fn new(agreed: Agreed, policy: DeflatePolicy) -> LinkDeflate {
        LinkDeflate {
            agreed,
            min_bytes: policy.min_bytes,
            compress: agreed
                .server_takeover
                .then(|| new_compress(agreed.window_bits())),
            decompress: agreed.client_takeover.then(new_decompress),
        }
    }

    /// Whether a message of `len` bytes is worth compressing.
    pub fn wants(&self, len: usize) -> bool {
        len >= self.min_bytes
    }

    /// Appends the compressed form of `input` (without the sync-flush tail) to `out`.
    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) {
        match &mut self.compress {
            Some(c) => deflate_into(c, input, out),
            None => SHARED.with_borrow_mut(|shared| {
                let bits = self.agreed.window_bits();
                let slot = usize::from(bits - MIN_WINDOW_BITS);
                let c = shared.compress[slot].get_or_insert_with(|| new_compress(bits));
                deflate_into(c, input, out);
                c.reset();
            }),
        }
    }

    /// Appends the inflated form of a compressed message to `out`, failing once it would pass
    /// `max` bytes.
    pub fn decompress(
        &mut self,
        input: &[u8],
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), InflateError> {
        match &mut self.decompress {
            Some(d) => inflate_into(d, input, max, out),
            None => SHARED.with_borrow_mut(|shared| {
                let d = &mut shared.decompress;
                let r = inflate_into(d, input, max, out);
                d.reset(false);
                r
            }),
        }
    }
}

fn deflate_into(c: &mut Compress, input: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    let before_in = c.total_in();
    out.reserve(input.len() / 2 + 64);
    loop {
        let consumed = (c.total_in() - before_in) as usize;
        c.compress_vec(&input[consumed..], out, FlushCompress::Sync)
            .expect("deflate never fails on well-formed state");
        let done = (c.total_in() - before_in) as usize == input.len();
        // A sync flush is complete when the output did not fill the spare capacity.
        if done && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    if out[start..].ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
}

fn inflate_into(
    d: &mut Decompress,
    input: &[u8],
    max: usize,
    out: &mut Vec<u8>,
) -> Result<(), InflateError> {
    let start = out.len();
    for chunk in [input, &TAIL[..]] {
        let before_in = d.total_in();
        loop {
            let consumed = (d.total_in() - before_in) as usize;
            if out.capacity() == out.len() {
                if out.len() - start >= max {
                    return Err(InflateError::TooLarge);
                }
                // Exact growth, capped one byte past the limit: a bomb never gets more memory.
                let room = max + 1 - (out.len() - start);
                out.reserve_exact((chunk.len() * 4).max(256).min(room));
            }
            let status = d
                .decompress_vec(&chunk[consumed..], out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            if out.len() - start > max {
                return Err(InflateError::TooLarge);
            }
            let used_all = (d.total_in() - before_in) as usize == chunk.len();
            if used_all && out.len() < out.capacity() || status == Status::StreamEnd {
                break;
            }
            if status == Status::BufError && out.len() < out.capacity() {
                // No progress possible with room to spare: the input ends mid-block.
                if used_all {
                    break;
                }
                return Err(InflateError::Corrupt);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ON: DeflatePolicy = DeflatePolicy {
        min_bytes: 0,
        takeover: true,
    };
    const SHARED_ONLY: DeflatePolicy = DeflatePolicy {
        min_bytes: 0,
        takeover: false,
    };

    #[test]
    fn negotiation_follows_the_rfc() {
        let both = Agreed {
            server_takeover: true,
            client_takeover: true,
            server_window_bits: None,
        };
        let none = Agreed::default();
        // What Chromium sends.
        let chrome = "permessage-deflate; client_max_window_bits";
        assert_eq!(negotiate(chrome, ON), Some(both));
        assert_eq!(negotiate(chrome, SHARED_ONLY), Some(none));
        assert_eq!(
            none.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert_eq!(both.response(), "permessage-deflate");
        // The client's own no-takeover requests are honoured.
        let asked = negotiate("permessage-deflate; server_no_context_takeover", ON).unwrap();
        assert!(!asked.server_takeover && asked.client_takeover);
        // A smaller window for the gateway's compressor is kept to and said in the answer.
        let small = negotiate("permessage-deflate; server_max_window_bits=10", SHARED_ONLY);
        assert_eq!(small.unwrap().server_window_bits, Some(10));
        assert_eq!(
            small.unwrap().response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10"
        );
        // A window we cannot keep to, unknown or repeated parameters: declined, next tried.
        assert_eq!(
            negotiate("permessage-deflate; server_max_window_bits=8", ON),
            None
        );
        assert_eq!(
            negotiate(
                "permessage-deflate; server_max_window_bits=8, permessage-deflate",
                ON
            ),
            Some(both)
        );
        assert_eq!(
            negotiate("permessage-deflate; server_max_window_bits", ON),
            None
        );
        assert_eq!(negotiate("permessage-deflate; foo=1", ON), None);
        assert_eq!(
            negotiate(
                "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
                ON
            ),
            None
        );
        assert_eq!(
            negotiate("permessage-deflate; client_max_window_bits=\"16\"", ON),
            None
        );
        assert_eq!(
            negotiate(
                "x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=12",
                ON
            ),
            Some(both)
        );
        assert_eq!(negotiate("x-webkit-deflate-frame", ON), None);
    }

    /// The RFC's own example: "Hello" compressed with no context.
    #[test]
    fn reads_the_rfc_example() {
        let mut d = LinkDeflate::new(Agreed::default(), SHARED_ONLY);
        let mut out = Vec::new();
        d.decompress(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100, &mut out)
            .unwrap();
        assert_eq!(out, b"Hello");
        // Twice: the shared context was reset in between.
        out.clear();
        d.decompress(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100, &mut out)
            .unwrap();
        assert_eq!(out, b"Hello");
    }

    /// With takeover the second identical message refers back to the first, so it is shorter,
    /// and only a receiver that kept its window can read it.
    #[test]
    fn context_takeover_round_trip() {
        let agreed = negotiate("permessage-deflate", ON).unwrap();
        let mut server = LinkDeflate::new(agreed, ON);
        let mut client = LinkDeflate::new(agreed, ON);
        let msg =
            br#"{"cmd":"CMD_DOWNSTREAM","key":"k-1","body":"aGVsbG8gd29ybGQgaGVsbG8gd29ybGQ="}"#;
        let (mut first, mut second) = (Vec::new(), Vec::new());
        server.compress(msg, &mut first);
        server.compress(msg, &mut second);
        assert!(second.len() < first.len() / 2, "{first:?} {second:?}");
        for wire in [&first, &second] {
            let mut plain = Vec::new();
            client.decompress(wire, 1 << 20, &mut plain).unwrap();
            assert_eq!(plain, msg);
        }
        // A receiver without the window cannot read the second message.
        let mut fresh = Decompress::new(false);
        let mut plain = Vec::new();
        let r = inflate_into(&mut fresh, &second, 1 << 20, &mut plain);
        assert!(r.is_err() || plain != msg);
    }

    #[test]
    fn without_takeover_every_message_stands_alone() {
        let agreed = negotiate("permessage-deflate", SHARED_ONLY).unwrap();
        let mut server = LinkDeflate::new(agreed, SHARED_ONLY);
        let msg = "hello hello hello hello hello hello".repeat(20);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        server.compress(msg.as_bytes(), &mut a);
        server.compress(msg.as_bytes(), &mut b);
        assert_eq!(a, b);
        let mut plain = Vec::new();
        inflate_into(&mut Decompress::new(false), &b, 1 << 20, &mut plain).unwrap();
        assert_eq!(plain, msg.as_bytes());
    }

    /// Messages that compress a little: the output outgrows its first reservation in the
    /// middle of a sync flush. miniz_oxide lost the end of such messages (Autobahn case
    /// 12.2.9 found it); the zlib-rs backend finishes the flush across calls.
    #[test]
    fn long_messages_that_barely_compress_survive_both_ways() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(9);
        for policy in [ON, SHARED_ONLY] {
            let agreed = negotiate("permessage-deflate", policy).unwrap();
            let mut a = LinkDeflate::new(agreed, policy);
            let mut b = LinkDeflate::new(agreed, policy);
            for len in [1000, 32768, 65535, 65536, 100_000, 300_000].repeat(8) {
                // A random walk, like the rows of a photograph.
                let step = rng.random_range(2..=8);
                let mut level = 128u8;
                let msg: Vec<u8> = (0..len)
                    .map(|_| {
                        level = level.wrapping_add_signed(rng.random_range(-step..=step));
                        level
                    })
                    .collect();
                let mut wire = Vec::new();
                a.compress(&msg, &mut wire);
                let mut back = Vec::new();
                b.decompress(&wire, 1 << 20, &mut back).unwrap();
                assert_eq!(back.len(), msg.len(), "{len} bytes, {policy:?}");
                assert!(back == msg);
            }
        }
    }

    #[test]
    fn bombs_and_garbage_are_refused() {
        let mut d = LinkDeflate::new(negotiate("permessage-deflate", ON).unwrap(), ON);
        let big = vec![b'a'; 1 << 20];
        let mut wire = Vec::new();
        d.compress(&big, &mut wire);
        assert!(wire.len() < 16 << 10, "a bomb: {} bytes", wire.len());
        let mut out = Vec::new();
        let mut r = LinkDeflate::new(negotiate("permessage-deflate", ON).unwrap(), ON);
        assert_eq!(
            r.decompress(&wire, 64 << 10, &mut out),
            Err(InflateError::TooLarge)
        );
        assert!(out.capacity() <= (64 << 10) + 1024);
        let mut out = Vec::new();
        let mut g = LinkDeflate::new(negotiate("permessage-deflate", ON).unwrap(), ON);
        assert_eq!(
            g.decompress(&[0xff, 0xff, 0xff, 0x00], 1024, &mut out),
            Err(InflateError::Corrupt)
        );
    }
}
