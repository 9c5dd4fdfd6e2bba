//! World keys and signatures: each world signs what it originates with an Ed25519 key,
//! and a receiver accepts a relayed event only with a valid signature from its origin.
//!
//! What is signed is the event's **canonical encoding** (RFC 8785, the JSON
//! Canonicalization Scheme), without its `sig` member, behind a fixed context line:
//!
//! ```text
//! signed bytes = "worldbridge-event-v1\n" + JCS(event minus "sig")
//! sig          = "ed25519:" + base64(Ed25519 signature of the signed bytes)
//! public key   = "ed25519:" + base64(the 32-byte verifying key)
//! ```
//! (standard base64 with padding). JCS, as a Python or Lua implementation would write it:
//! no white space; object members sorted by their names' UTF-16 code units; strings with
//! only `"`, `\`, and the control characters below U+0020 escaped (`\b \f \n \r \t`,
//! others `\u00xx` in lower-case hex), everything else as literal UTF-8; numbers as
//! ECMAScript prints them (integers in decimal, `0.7`, `1e-7`, `1e+21`; the shortest form
//! that reads back as the same double), so integers beyond ±2^53 cannot be signed.
//!
//! The key file (`world.key` in the data directory, mode 0600) holds the 32-byte secret
//! seed: a first line `worldbridge-world-key v1`, then `ed25519:<base64>`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

/// What precedes the canonical encoding in the signed bytes: signatures made for one
/// purpose cannot be replayed as another. This one is a federated event's.
pub const CONTEXT: &[u8] = b"worldbridge-event-v1\n";
/// The context of a world's presence report.
pub const PRESENCE_CONTEXT: &[u8] = b"worldbridge-presence-v1\n";
/// The context of a travel message (`offer`, `commit`, `abort`).
pub const TRAVEL_CONTEXT: &[u8] = b"worldbridge-travel-v1\n";
/// The member of a signed event that carries its signature (not itself signed).
pub const SIG_FIELD: &str = "sig";
const KEY_FILE_HEADER: &str = "worldbridge-world-key v1";
/// Integers beyond this cannot be told apart from their neighbours as ECMAScript numbers.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Why a key or a signature is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignError {
    /// A key or signature that is not `ed25519:<base64>` of the right length.
    BadFormat(String),
    /// The value cannot be canonicalised (a number JCS cannot carry exactly).
    NotCanonical(String),
    /// The event has no `sig`, or it does not verify against the key.
    BadSignature(String),
    /// The key file cannot be read, written or parsed.
    KeyFile(String),
}

impl std::fmt::Display for SignError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignError::BadFormat(s)
            | SignError::NotCanonical(s)
            | SignError::BadSignature(s)
            | SignError::KeyFile(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for SignError {}

/// A world's public key: what peers configure as `public_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parse `ed25519:<base64 of 32 bytes>`.
    pub fn parse(text: &str) -> Result<PublicKey, SignError> {
        let bytes = tagged_base64(text, "public key")?;
        let arr: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            SignError::BadFormat(format!("a public key is 32 bytes, this one is {}", b.len()))
        })?;
        VerifyingKey::from_bytes(&arr)
            .map(PublicKey)
            .map_err(|_| SignError::BadFormat("that is not an Ed25519 public key".into()))
    }

    /// Check `event`'s `sig` against this key.
    pub fn verify(&self, event: &Value) -> Result<(), SignError> {
        self.verify_in(CONTEXT, event)
    }

    /// Check `value`'s `sig` against this key, signed behind `context`.
    pub fn verify_in(&self, context: &[u8], event: &Value) -> Result<(), SignError> {
        let Some(Value::String(sig)) = event.get(SIG_FIELD) else {
            return Err(SignError::BadSignature("it carries no `sig`".into()));
        };
        let bytes =
            tagged_base64(sig, "signature").map_err(|e| SignError::BadSignature(e.to_string()))?;
        let arr: [u8; 64] = bytes
            .try_into()
            .map_err(|_| SignError::BadSignature("an Ed25519 signature is 64 bytes".into()))?;
        let message = signed_bytes_in(context, event)?;
        self.0
            .verify_strict(&message, &Signature::from_bytes(&arr))
            .map_err(|_| SignError::BadSignature("the signature does not match the event".into()))
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ed25519:{}", B64.encode(self.0.as_bytes()))
    }
}

/// A world's signing key.
#[derive(Clone)]
pub struct WorldKey(SigningKey);

impl std::fmt::Debug for WorldKey {
    /// The public half only: a secret never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WorldKey({})", self.public())
    }
}

impl WorldKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<WorldKey, SignError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| SignError::KeyFile(format!("no random bytes for a new key: {e}")))?;
        Ok(WorldKey(SigningKey::from_bytes(&seed)))
    }

    /// The key in `path`, or a new one written there (mode 0600) when there is none.
    /// The bool is true when the key was created.
    pub fn load_or_create(path: &Path) -> Result<(WorldKey, bool), SignError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse_file(&text)
                .map(|k| (k, false))
                .map_err(|e| SignError::KeyFile(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                key.write(path)?;
                Ok((key, true))
            }
            Err(e) => Err(SignError::KeyFile(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    fn parse_file(text: &str) -> Result<WorldKey, SignError> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        if lines.next() != Some(KEY_FILE_HEADER) {
            return Err(SignError::KeyFile(format!(
                "not a world key file (the first line must be {KEY_FILE_HEADER:?})"
            )));
        }
        let seed = lines
            .next()
            .ok_or_else(|| SignError::KeyFile("the key line is missing".into()))
            .and_then(|l| tagged_base64(l, "secret key"))?;
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| SignError::KeyFile("the secret key is not 32 bytes".into()))?;
        Ok(WorldKey(SigningKey::from_bytes(&seed)))
    }

    /// Write the key to `path` (a new file, mode 0600, synced; never over another key).
    fn write(&self, path: &Path) -> Result<(), SignError> {
        use std::io::Write;
        let text = format!(
            "{KEY_FILE_HEADER}\ned25519:{}\n",
            B64.encode(self.0.to_bytes())
        );
        let fail = |e: std::io::Error| {
            SignError::KeyFile(format!("cannot write the key to {}: {e}", path.display()))
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(path).map_err(fail)?;
        f.write_all(text.as_bytes()).map_err(fail)?;
        f.sync_all().map_err(fail)
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// `event` with its `sig` set: the signature of its canonical encoding (any `sig`
    /// it had is replaced).
    pub fn sign(&self, event: &mut Value) -> Result<(), SignError> {
        self.sign_in(CONTEXT, event)
    }

    /// `value` with its `sig` set, signed behind `context`.
    pub fn sign_in(&self, context: &[u8], event: &mut Value) -> Result<(), SignError> {
        let message = signed_bytes_in(context, event)?;
        let sig = self.0.sign(&message);
        if let Value::Object(m) = event {
            m.insert(
                SIG_FIELD.into(),
                format!("ed25519:{}", B64.encode(sig.to_bytes())).into(),
            );
            Ok(())
        } else {
            Err(SignError::NotCanonical(
                "only a JSON object can carry a `sig`".into(),
            ))
        }
    }
}

#[cfg(test)]
impl WorldKey {
    /// A key from a fixed seed (tests only: reproducible signatures).
    pub(crate) fn from_seed(seed: [u8; 32]) -> WorldKey {
        WorldKey(SigningKey::from_bytes(&seed))
    }
}

/// The bytes a signature covers: the context line, then the canonical encoding of
/// `event` without its `sig`.
pub fn signed_bytes(event: &Value) -> Result<Vec<u8>, SignError> {
    signed_bytes_in(CONTEXT, event)
}

/// [`signed_bytes`] behind another context line.
pub fn signed_bytes_in(context: &[u8], event: &Value) -> Result<Vec<u8>, SignError> {
    let mut out = String::from_utf8_lossy(context).into_owned();
    match event {
        Value::Object(m) => {
            let mut unsigned = m.clone();
            unsigned.remove(SIG_FIELD);
            canonical_into(&Value::Object(unsigned), &mut out)?;
        }
        other => canonical_into(other, &mut out)?,
    }
    Ok(out.into_bytes())
}

/// The RFC 8785 (JCS) encoding of `v`.
pub fn canonical(v: &Value) -> Result<String, SignError> {
    let mut out = String::new();
    canonical_into(v, &mut out)?;
    Ok(out)
}

fn canonical_into(v: &Value, out: &mut String) -> Result<(), SignError> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => number(n, out)?,
        Value::String(s) => string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_into(item, out)?;
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut members: Vec<(&String, &Value)> = m.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                string(k, out);
                out.push(':');
                canonical_into(v, out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn number(n: &serde_json::Number, out: &mut String) -> Result<(), SignError> {
    if let Some(u) = n.as_u64() {
        return safe_integer(u, false, out);
    }
    if let Some(i) = n.as_i64() {
        return safe_integer(i.unsigned_abs(), i < 0, out);
    }
    let f = n
        .as_f64()
        .filter(|f| f.is_finite())
        .ok_or_else(|| SignError::NotCanonical(format!("{n} is not a finite number")))?;
    ecmascript_number(f, out);
    Ok(())
}

fn safe_integer(abs: u64, negative: bool, out: &mut String) -> Result<(), SignError> {
    if abs > MAX_SAFE_INTEGER {
        return Err(SignError::NotCanonical(format!(
            "the integer {}{abs} is beyond ±2^53 and cannot be signed exactly",
            if negative { "-" } else { "" }
        )));
    }
    if negative && abs != 0 {
        out.push('-');
    }
    let _ = write!(out, "{abs}");
    Ok(())
}

/// ECMAScript's `Number.prototype.toString` for a finite double: the shortest digits that
/// read back as `f` (from ryu), laid out by the ECMAScript rules.
fn ecmascript_number(f: f64, out: &mut String) {
    if f == 0.0 {
        out.push('0');
        return;
    }
    if f < 0.0 {
        out.push('-');
    }
    let mut buf = ryu::Buffer::new();
    let shortest = buf.format_finite(f.abs());
    let (mantissa, exp) = match shortest.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (shortest, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    // value = 0.<digits> × 10^n
    let mut digits: String = format!("{int_part}{frac_part}");
    let mut n = int_part.len() as i32 + exp;
    while digits.starts_with('0') {
        digits.remove(0);
        n -= 1;
    }
    while digits.ends_with('0') {
        digits.pop();
    }
    let k = digits.len() as i32;
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        let e = n - 1;
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{}", if e < 0 { '-' } else { '+' }, e.abs());
    }
}

/// The bytes of `ed25519:<base64>`.
fn tagged_base64(text: &str, what: &str) -> Result<Vec<u8>, SignError> {
    let b64 = text.trim().strip_prefix("ed25519:").ok_or_else(|| {
        SignError::BadFormat(format!(
            "a {what} is written ed25519:<base64>, not {text:?}"
        ))
    })?;
    B64.decode(b64)
        .map_err(|e| SignError::BadFormat(format!("the {what} is not valid base64: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn jcs(v: Value) -> String {
        canonical(&v).unwrap()
    }

    #[test]
    fn numbers_are_written_as_ecmascript_does() {
        for (f, want) in [
            (0.7, "0.7"),
            (-0.0, "0"),
            (1.0, "1"),
            (-1.5, "-1.5"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (123456789012345680000.0, "123456789012345680000"),
            (1e-6, "0.000001"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (0.000123, "0.000123"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (333333333.3333333, "333333333.3333333"),
            (0.1 + 0.2, "0.30000000000000004"),
        ] {
            let mut s = String::new();
            ecmascript_number(f, &mut s);
            assert_eq!(s, want, "{f:e}");
        }
        assert_eq!(
            jcs(json!([1, -1, 0, 9007199254740991u64])),
            "[1,-1,0,9007199254740991]"
        );
        assert!(canonical(&json!(9007199254740992u64)).is_err());
        assert!(canonical(&json!(-9007199254740992i64)).is_err());
    }

    #[test]
    fn members_sort_by_utf16_and_strings_escape_only_what_they_must() {
        assert_eq!(
            jcs(json!({"b": 1, "a": {"d": [true, null], "c": "x"}, "\u{e000}": 1, "\u{1f600}": 2})),
            "{\"a\":{\"c\":\"x\",\"d\":[true,null]},\"b\":1,\"\u{1f600}\":2,\"\u{e000}\":1}",
            "U+1F600 is D83D DE00 in UTF-16: before U+E000"
        );
        assert_eq!(
            jcs(json!("q\"b\\n\n\t\u{1}\u{1f}\u{7f}é€\u{2028}/")),
            "\"q\\\"b\\\\n\\n\\t\\u0001\\u001f\u{7f}é€\u{2028}/\""
        );
    }

    #[test]
    fn keys_and_signatures_round_trip_and_bad_ones_are_named() {
        let key = WorldKey::generate().unwrap();
        let public = key.public();
        assert_eq!(PublicKey::parse(&public.to_string()).unwrap(), public);
        let mut ev =
            json!({"origin": "mac", "seq": 7, "type": "say", "message": "hi", "score": 0.25});
        key.sign(&mut ev).unwrap();
        assert!(ev["sig"].as_str().unwrap().starts_with("ed25519:"));
        public.verify(&ev).unwrap();
        // Member order does not matter: the encoding is canonical.
        let reordered: Value = serde_json::from_str(
            &format!("{{\"sig\":{},\"score\":0.25,\"message\":\"hi\",\"type\":\"say\",\"seq\":7,\"origin\":\"mac\"}}", ev["sig"]),
        )
        .unwrap();
        public.verify(&reordered).unwrap();
        // Another world's key does not verify it; a changed field does not verify.
        let other = WorldKey::generate().unwrap().public();
        assert!(matches!(other.verify(&ev), Err(SignError::BadSignature(_))));
        let mut changed = ev.clone();
        changed["message"] = json!("hi!");
        assert!(public.verify(&changed).is_err());
        let mut unsigned = ev.clone();
        unsigned.as_object_mut().unwrap().remove("sig");
        assert!(public
            .verify(&unsigned)
            .unwrap_err()
            .to_string()
            .contains("no `sig`"));
        for bad in ["", "ed25519:", "ed25519:!!", "rsa:AAAA", "ed25519:AAAA"] {
            assert!(PublicKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_key_file_is_created_once_with_mode_0600_and_read_back() {
        let dir = std::env::temp_dir().join(format!(
            "wb-key-{}-{}",
            std::process::id(),
            crate::world::time::now_ms()
        ));
        let path = dir.join("world.key");
        let (a, created) = WorldKey::load_or_create(&path).unwrap();
        assert!(created);
        let (b, created) = WorldKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(a.public(), b.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        std::fs::write(&path, "something else\n").unwrap();
        let err = WorldKey::load_or_create(&path).err().unwrap().to_string();
        assert!(err.contains("not a world key file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn event() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-(1i64 << 53) + 1..(1i64 << 53)).prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ];
        let tree = leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        prop::collection::btree_map("[a-z_]{1,8}", tree, 1..6)
            .prop_map(|m| Value::Object(m.into_iter().filter(|(k, _)| k != SIG_FIELD).collect()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn signing_then_verifying_round_trips_and_any_changed_byte_fails(
            ev in event(),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let key = WorldKey::from_seed([7; 32]);
            let mut signed = ev.clone();
            key.sign(&mut signed).unwrap();
            // Through text and back, as a peer receives it.
            let received: Value = serde_json::from_str(&signed.to_string()).unwrap();
            prop_assert!(key.public().verify(&received).is_ok());
            // Any single byte of the signed bytes changed: the signature no longer holds.
            let mut message = signed_bytes(&signed).unwrap();
            let i = at.index(message.len());
            message[i] ^= flip;
            let sig = tagged_base64(signed["sig"].as_str().unwrap(), "signature").unwrap();
            let sig = Signature::from_bytes(&sig.try_into().unwrap());
            prop_assert!(key.public().0.verify_strict(&message, &sig).is_err());
            // And any single byte of the signature changed.
            let mut sig_bytes = sig.to_bytes();
            let j = at.index(64);
            sig_bytes[j] ^= flip;
            let mut forged = signed.clone();
            forged["sig"] = Value::from(format!("ed25519:{}", B64.encode(sig_bytes)));
            prop_assert!(key.public().verify(&forged).is_err());
        }
    }
}
