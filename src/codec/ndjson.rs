//! Newline-delimited JSON framing for the line protocol: bytes ⇄ lines.
//!
//! One JSON object per line, `\n`-terminated, a trailing `\r` dropped. A line longer than
//! the cap is reported once as [`Frame::TooLong`] and its bytes are discarded up to the
//! next newline, so the connection lives on and memory stays bounded. "Need more bytes"
//! is `None`.

use bytes::{Buf, BytesMut};

/// One framed unit of input.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete line without its terminator (may be empty).
    Line(BytesMut),
    /// A line went past the cap; it is being discarded up to its newline.
    TooLong,
}

/// The framing state of one connection.
#[derive(Debug)]
pub struct LineCodec {
    max: usize,
    /// Inside an over-long line: drop bytes until the next `\n`.
    discarding: bool,
    /// Bytes of `buf` already searched for a newline (so a line that arrives a byte at a
    /// time is not rescanned from its start on every read).
    scanned: usize,
}

impl LineCodec {
    pub fn new(max_line_bytes: usize) -> LineCodec {
        LineCodec {
            max: max_line_bytes,
            discarding: false,
            scanned: 0,
        }
    }

    /// The next frame in `buf`, consuming it; `None` when more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        loop {
            let found = memchr(b'\n', &buf[self.scanned..]).map(|i| i + self.scanned);
            if self.discarding {
                match found {
                    Some(nl) => {
                        buf.advance(nl + 1);
                        self.discarding = false;
                        self.scanned = 0;
                        continue;
                    }
                    None => {
                        buf.clear();
                        self.scanned = 0;
                        return None;
                    }
                }
            }
            return match found {
                Some(nl) => {
                    self.scanned = 0;
                    let mut line = buf.split_to(nl + 1);
                    line.truncate(nl);
                    if line.last() == Some(&b'\r') {
                        line.truncate(nl - 1);
                    }
                    if line.len() > self.max {
                        return Some(Frame::TooLong);
                    }
                    Some(Frame::Line(line))
                }
                // `max + 1` allows for the `\r` of a full-length line still in flight.
                None if buf.len() > self.max + 1 => {
                    buf.clear();
                    self.scanned = 0;
                    self.discarding = true;
                    Some(Frame::TooLong)
                }
                None => {
                    self.scanned = buf.len();
                    None
                }
            };
        }
    }

    /// Whether the codec is dropping the rest of an over-long line.
    pub fn is_discarding(&self) -> bool {
        self.discarding
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

/// Append one message and its newline to `out`.
pub fn encode(value: &impl serde::Serialize, out: &mut Vec<u8>) {
    // Serialising our own types into a Vec cannot fail.
    if serde_json::to_writer(&mut *out, value).is_ok() {
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(codec: &mut LineCodec, buf: &mut BytesMut) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = codec.decode(buf) {
            out.push(f);
        }
        out
    }

    fn line(s: &str) -> Frame {
        Frame::Line(BytesMut::from(s.as_bytes()))
    }

    /// Feed `input` split at every byte position (and byte by byte): the frames are the
    /// same whatever the split.
    fn check_every_split(max: usize, input: &[u8], want: &[Frame]) {
        for cut in 0..=input.len() {
            let mut codec = LineCodec::new(max);
            let mut buf = BytesMut::new();
            buf.extend_from_slice(&input[..cut]);
            let mut got = frames(&mut codec, &mut buf);
            buf.extend_from_slice(&input[cut..]);
            got.extend(frames(&mut codec, &mut buf));
            assert_eq!(
                got,
                want,
                "split at {cut} of {:?}",
                String::from_utf8_lossy(input)
            );
        }
        let mut codec = LineCodec::new(max);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in input {
            buf.extend_from_slice(&[*b]);
            got.extend(frames(&mut codec, &mut buf));
        }
        assert_eq!(got, want, "byte by byte");
    }

    #[test]
    fn lines_crlf_and_empty_lines() {
        check_every_split(
            64,
            b"{\"type\":\"ping\"}\n{\"a\":1}\r\n\n",
            &[line("{\"type\":\"ping\"}"), line("{\"a\":1}"), line("")],
        );
    }

    #[test]
    fn a_partial_line_waits() {
        let mut c = LineCodec::new(64);
        let mut buf = BytesMut::from(&b"{\"type\":"[..]);
        assert_eq!(c.decode(&mut buf), None);
        assert_eq!(buf.len(), 8, "nothing consumed");
    }

    #[test]
    fn too_long_lines_are_reported_once_and_skipped() {
        let mut input = vec![b'x'; 40];
        input.extend_from_slice(b"\n{\"ok\":1}\n");
        check_every_split(10, &input, &[Frame::TooLong, line("{\"ok\":1}")]);
    }

    #[test]
    fn exactly_max_is_fine_with_or_without_cr() {
        check_every_split(
            5,
            b"abcde\nabcde\r\nabcdef\n",
            &[line("abcde"), line("abcde"), Frame::TooLong],
        );
    }

    #[test]
    fn discarding_bounds_memory() {
        let mut c = LineCodec::new(8);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[b'y'; 100]);
        assert_eq!(c.decode(&mut buf), Some(Frame::TooLong));
        assert!(c.is_discarding());
        for _ in 0..100 {
            buf.extend_from_slice(&[b'y'; 1000]);
            assert_eq!(c.decode(&mut buf), None);
            assert!(buf.is_empty(), "discarded bytes are not kept");
        }
        buf.extend_from_slice(b"yy\nok\n");
        assert_eq!(c.decode(&mut buf), Some(line("ok")));
    }

    #[test]
    fn encode_appends_a_newline() {
        let mut out = Vec::new();
        encode(&serde_json::json!({"type": "pong"}), &mut out);
        assert_eq!(out, b"{\"type\":\"pong\"}\n");
    }
}
