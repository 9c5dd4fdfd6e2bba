//! JSON string literals (and integers) written straight into a byte buffer, byte for byte as
//! `serde_json` writes them (`\"`, `\\`, `\b \f \n \r \t`, `\u00xx` for the other control
//! characters, everything else as it is), for the answers every request writes: eight
//! bytes are checked at a time, and runs with nothing to escape are copied whole.

/// One in every byte.
const ONES: u64 = 0x0101_0101_0101_0101;
/// The top bit of every byte.
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Whether some byte of `w` is a control character, `"` or `\`. Never false when one
/// is (a true answer only sends those eight bytes the slow way).
fn needs_escape(w: u64) -> bool {
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    (control | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\')))) != 0
}

/// How `serde_json` writes `c`, a control character, `"` or `\`.
fn escape(c: u8, out: &mut Vec<u8>) {
    let short = match c {
        b'"' => b'"',
        b'\\' => b'\\',
        0x08 => b'b',
        0x0c => b'f',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        0..=0x1f => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let hex = [HEX[usize::from(c >> 4)], HEX[usize::from(c & 0xf)]];
            out.extend_from_slice(b"\\u00");
            out.extend_from_slice(&hex);
            return;
        }
        _ => c,
    };
    out.extend_from_slice(&[b'\\', short]);
}

/// Whether `c` is written escaped: a control character, `"` or `\`.
fn special(c: u8) -> bool {
    c < 0x20 || c == b'"' || c == b'\\'
}

/// How many bytes from the start of `b` go as they are: the place of the first control
/// character, `"` or `\` (`b.len()` when there is none).
#[inline]
pub fn plain_len(b: &[u8]) -> usize {
    let mut i = 0;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        if needs_escape(u64::from_le_bytes(w)) {
            break;
        }
        i += 8;
    }
    i + b[i..]
        .iter()
        .position(|&c| special(c))
        .unwrap_or(b.len() - i)
}

/// Appends `s` as a JSON string literal (with its quotes).
#[inline]
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let plain = plain_len(b);
    out.reserve(b.len() + 2);
    out.push(b'"');
    out.extend_from_slice(&b[..plain]);
    if plain < b.len() {
        push_escaped(out, b, plain);
    }
    out.push(b'"');
}

/// The rest of [`push_str`]'s string from `b[run]`, a byte to escape.
fn push_escaped(out: &mut Vec<u8>, b: &[u8], mut run: usize) {
    while let Some(&c) = b.get(run) {
        escape(c, out);
        let at = run + 1 + plain_len(&b[run + 1..]);
        out.extend_from_slice(&b[run + 1..at]);
        run = at;
    }
}

/// Appends `n` in decimal (as `serde_json` writes an integer), without going through `fmt`.
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ours(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        push_str(&mut out, s);
        out
    }

    #[test]
    fn every_byte_is_written_as_serde_json_writes_it() {
        for c in 0..=0x7fu8 {
            // Alone, and at each place of an 8-byte chunk, with text around it.
            let one = char::from(c).to_string();
            assert_eq!(ours(&one), serde_json::to_vec(&one).unwrap_or_default());
            for at in 0..9 {
                let s = format!("{}{}{}", "a".repeat(at), one, "é b".repeat(3));
                assert_eq!(
                    ours(&s),
                    serde_json::to_vec(&s).unwrap_or_default(),
                    "{s:?}"
                );
            }
        }
    }

    #[test]
    fn integers_are_written_as_serde_json_writes_them() {
        for n in [
            0,
            7,
            9,
            10,
            99,
            100,
            65_535,
            1_048_576,
            u64::MAX / 3,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, serde_json::to_vec(&n).unwrap_or_default());
        }
    }

    proptest! {
        #[test]
        fn any_text_is_written_as_serde_json_writes_it(s in "(\\PC|[\"\\\\\u{0}-\u{1f}\u{7f}])*") {
            prop_assert_eq!(ours(&s), serde_json::to_vec(&s).unwrap_or_default());
        }
    }
}
