//! The proxy-wasm ABI's serialized header map, decoded without trusting it.
//!
//! `proxy_get_header_map_pairs` hands the VM one buffer: a little-endian `u32` count N, then N
//! pairs of `u32` sizes (name, value), then each name and value followed by a NUL byte. The
//! SDK's own decoder (`hostcalls::get_map`) turns every name and value into a `String` with
//! `unwrap`: one request header carrying a byte that is not UTF-8 (HTTP allows obs-text,
//! e.g. a Latin-1 `é`) would panic the VM and, failing closed, take the workload's traffic
//! down. Here a malformed buffer is an error and a value that is not UTF-8 is kept, with each
//! invalid sequence replaced by U+FFFD: the header stays present (a rule on it cannot be
//! dodged by such a byte) and its value can match no configured string that a client could
//! not also send as valid UTF-8.
//!
//! [`encode_pairs`] is the other direction: the maps the VM hands the host (a local reply's
//! headers, a callout's request headers).

use std::borrow::Cow;
use std::ops::Range;

/// Whether two header names are one to a server that folds case and reads `_` as `-`, as
/// CGI-style stacks do (WSGI, Rack, PHP: `x_user_email` and `X-User-Email` are both
/// `HTTP_X_USER_EMAIL`). Envoy passes names with underscores by default
/// (`headers_with_underscores_action: ALLOW`).
pub fn same_header_loosely(a: &[u8], b: &[u8]) -> bool {
    let fold = |c: &u8| if *c == b'_' { b'-' } else { c.to_ascii_lowercase() };
    a.len() == b.len() && a.iter().map(fold).eq(b.iter().map(fold))
}

/// A decoded (name, value): borrowed from the buffer when valid UTF-8.
pub type DecodedPair<'a> = (Cow<'a, str>, Cow<'a, str>);

/// Where one pair's name and value lie in the buffer (NUL terminators excluded).
pub type PairSpan = (Range<usize>, Range<usize>);

/// The pairs of a serialized header map, as byte ranges of `buf`, checked against its
/// bounds; the one parser both decoders share. An empty buffer is an empty map (what the host
/// gives when there are no headers).
pub fn pair_spans(buf: &[u8]) -> Result<PairSpans<'_>, &'static str> {
    if buf.is_empty() {
        return Ok(PairSpans {
            buf,
            count: 0,
            next: 0,
            at: 0,
        });
    }
    let count = word(buf, 0)?;
    // Every pair takes at least 8 bytes of sizes and 2 NULs: a count the buffer cannot
    // hold is refused before anything is allocated for it.
    if count > buf.len() / 10 {
        return Err("pair count larger than the buffer");
    }
    Ok(PairSpans {
        buf,
        count,
        next: 0,
        at: 4 + count * 8,
    })
}

/// See [`pair_spans`].
pub struct PairSpans<'a> {
    buf: &'a [u8],
    count: usize,
    next: usize,
    /// Where the next name starts.
    at: usize,
}

impl PairSpans<'_> {
    /// Where the names and values start (after the size table).
    pub fn data_start(&self) -> usize {
        4 + self.count * 8
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn field(&mut self, len: usize) -> Result<Range<usize>, &'static str> {
        let end = self.at.checked_add(len).ok_or("size overflow")?;
        if end > self.buf.len() {
            return Err("truncated pair data");
        }
        if self.buf.get(end) != Some(&0) {
            return Err("pair data not NUL-terminated");
        }
        let r = self.at..end;
        self.at = end + 1;
        Ok(r)
    }
}

impl Iterator for PairSpans<'_> {
    type Item = Result<PairSpan, &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.count {
            return None;
        }
        let i = self.next;
        self.next += 1;
        let spans = (|| {
            let name_len = word(self.buf, 4 + i * 8)?;
            let value_len = word(self.buf, 8 + i * 8)?;
            let name = self.field(name_len)?;
            let value = self.field(value_len)?;
            Ok((name, value))
        })();
        if spans.is_err() {
            self.next = self.count; // nothing after a malformed pair is trusted
        }
        Some(spans)
    }
}

/// The little-endian `u32` at `at`.
fn word(buf: &[u8], at: usize) -> Result<usize, &'static str> {
    let end = at.checked_add(4).ok_or("size overflow")?;
    let b = buf.get(at..end).ok_or("truncated size table")?;
    let mut w = [0u8; 4];
    w.copy_from_slice(b);
    usize::try_from(u32::from_le_bytes(w)).map_err(|_| "size overflow")
}

/// Serializes (name, value) pairs as the host reads a header map, the layout
/// [`pair_spans`] takes apart: one allocation of exactly the size needed, as the SDK's
/// `serialize_map` does. (No name or value in the VM comes near the `u32` sizes' 4 GiB.)
pub fn encode_pairs<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Vec<u8> {
    let size = pairs.iter().fold(4usize, |n, (k, v)| {
        n.saturating_add(k.as_ref().len())
            .saturating_add(v.as_ref().len())
            .saturating_add(10)
    });
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref().as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_ref().as_bytes());
        out.push(0);
    }
    out
}

/// Decodes a serialized header map. Names and values are borrowed from `buf` (nothing is
/// copied for valid UTF-8, which every well-behaved request is); only an invalid one is
/// replaced.
pub fn decode_pairs(buf: &[u8]) -> Result<Vec<DecodedPair<'_>>, &'static str> {
    let spans = pair_spans(buf)?;
    let mut out = Vec::with_capacity(spans.len());
    let data_start = spans.data_start();
    // All names and values are validated in one pass over the data (a run of long ASCII goes
    // a word at a time; 14 short strings one by one cost V8 three times as much): in valid
    // data each one is then just a slice. Only if some are not valid UTF-8 are they looked at
    // one by one, and only the invalid ones are replaced (`from_utf8_lossy` goes byte by byte).
    let whole = buf.get(data_start..).and_then(|d| std::str::from_utf8(d).ok());
    let text = |r: Range<usize>| -> Cow<'_, str> {
        let valid = whole.and_then(|w| w.get(r.start.checked_sub(data_start)?..r.end.checked_sub(data_start)?));
        let bytes = buf.get(r).unwrap_or_default();
        match valid.map_or_else(|| std::str::from_utf8(bytes), Ok) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => Cow::Owned(String::from_utf8_lossy(bytes).into_owned()),
        }
    };
    for pair in spans {
        let (name, value) = pair?;
        out.push((text(name), text(value)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serializes pairs the way the host does.
    fn encode(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend((k.len() as u32).to_le_bytes());
            out.extend((v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend(*k);
            out.push(0);
            out.extend(*v);
            out.push(0);
        }
        out
    }

    #[test]
    fn decodes_what_the_host_encodes() {
        let pairs: [(&[u8], &[u8]); 4] = [
            (b":method", b"GET"),
            (b":path", b"/orders/42?x=1"),
            (b"authorization", b"Bearer a.b.c"),
            (b"x-empty", b""),
        ];
        let got: Vec<(String, String)> = decode_pairs(&encode(&pairs))
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        assert!(decode_pairs(&encode(&pairs))
            .unwrap()
            .iter()
            .all(|(k, v)| matches!((k, v), (Cow::Borrowed(_), Cow::Borrowed(_)))));
        let want: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8(k.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                )
            })
            .collect();
        assert_eq!(got, want);
        assert_eq!(decode_pairs(&[]).unwrap(), vec![]);
        assert_eq!(decode_pairs(&encode(&[])).unwrap(), vec![]);
    }

    #[test]
    fn encode_pairs_writes_what_the_host_reads() {
        let pairs = [
            ("content-type", "application/json"),
            ("www-authenticate", ""),
            ("x", "é"),
        ];
        let bytes: Vec<(&[u8], &[u8])> = pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect();
        let got = encode_pairs(&pairs);
        assert_eq!(got, encode(&bytes));
        assert_eq!(got.len(), got.capacity(), "one allocation of the exact size");
        let back = decode_pairs(&got).unwrap();
        assert!(back.iter().map(|(k, v)| (&**k, &**v)).eq(pairs.iter().copied()));
        // Owned strings, as a local reply's headers are kept; and the empty map.
        let owned = vec![("a".to_string(), "b".to_string())];
        assert_eq!(encode_pairs(&owned), encode(&[(b"a".as_slice(), b"b".as_slice())]));
        assert_eq!(encode_pairs::<&str, &str>(&[]), 0u32.to_le_bytes());
    }

    #[test]
    fn a_value_that_is_not_utf8_is_kept_lossily() {
        // obs-text: Latin-1 "café", and a lone continuation byte in a name.
        let buf = encode(&[
            (b"x-latin", b"caf\xe9"),
            (b"x-\x80", b"v"),
            (b"authorization", b"Bearer \xff"),
        ]);
        let got = decode_pairs(&buf).unwrap();
        assert_eq!((&*got[0].0, &*got[0].1), ("x-latin", "caf\u{fffd}"));
        assert_eq!((&*got[1].0, &*got[1].1), ("x-\u{fffd}", "v"));
        assert_eq!(got[2].1, "Bearer \u{fffd}");
        // The valid ones are still borrowed, not copied.
        assert!(matches!(got[1].1, Cow::Borrowed("v")));
        assert!(matches!(got[2].0, Cow::Borrowed("authorization")));
    }

    #[test]
    fn malformed_buffers_are_errors_never_panics() {
        let good = encode(&[(b"a", b"bc"), (b"dd", b"")]);
        // Every truncation of a valid buffer.
        for n in 1..good.len() {
            assert!(decode_pairs(&good[..n]).is_err(), "prefix {n}");
        }
        // A count far larger than the buffer; sizes that overflow or run past the end.
        let mut huge = good.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_pairs(&huge), Err("pair count larger than the buffer"));
        let mut long = good.clone();
        long[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_pairs(&long).is_err());
        // A missing NUL terminator.
        let mut nul = good.clone();
        let i = 4 + 2 * 8 + 1;
        nul[i] = b'x';
        assert_eq!(decode_pairs(&nul), Err("pair data not NUL-terminated"));
        // Arbitrary bytes: an error or a decoding, but never a panic.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let mut b: Vec<u8> = (0..len).map(|i| (seed >> (i % 8 * 8)) as u8).collect();
            if len >= 4 {
                b[..4].copy_from_slice(&((seed % 3) as u32).to_le_bytes());
            }
            let _ = decode_pairs(&b);
        }
    }
}
