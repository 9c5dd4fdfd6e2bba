//! The one set of JSON field checks the doors read requests with, and the token compare.
//!
//! Every check answers a hub [`Refusal`] with a stable code, so a request with a missing,
//! mistyped or oversized field is refused in the same words over HTTP and the line
//! protocol: `missing_field` ("`room` is required"), `bad_field` ("`room` must be a
//! string, not a number"; names are checked by [`crate::world::check_name`]),
//! `message_too_long`, and `bad_json` for a body that is not a JSON object.

use crate::app::outcome::Refusal;
use crate::world::check_name;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// A request body as a JSON object.
pub fn object(body: &[u8]) -> Result<Map<String, Value>, Refusal> {
    if body.is_empty() {
        return Err(Refusal::new(
            "bad_json",
            "the body is empty; send a JSON object",
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Refusal::new("bad_json", "the body must be a JSON object")),
        Err(e) => Err(Refusal::new(
            "bad_json",
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

/// The fields of one JSON object (a request body, a line message).
#[derive(Clone, Copy)]
pub struct Fields<'a>(pub &'a Map<String, Value>);

impl Fields<'_> {
    /// A string field, `None` when absent or null. A number is taken for `user_id` (game
    /// servers number their players).
    pub fn opt(&self, name: &str) -> Result<Option<String>, Refusal> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) if name == "user_id" => Ok(Some(n.to_string())),
            Some(other) => Err(Refusal::new(
                "bad_field",
                format!("`{name}` must be a string, not {}", type_name(other)),
            )),
        }
    }

    /// A boolean field, `None` when absent or null.
    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>, Refusal> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(Refusal::new(
                "bad_field",
                format!("`{name}` must be true or false, not {}", type_name(other)),
            )),
        }
    }

    /// A string field that must be there.
    pub fn req(&self, name: &str) -> Result<String, Refusal> {
        required(name, self.opt(name)?)
    }

    /// A name-like field (user ids, rooms, worlds): required, non-empty, bounded, no
    /// control characters.
    pub fn name(&self, name: &'static str) -> Result<String, Refusal> {
        checked_name(name, self.opt(name)?)
    }

    /// An optional name-like field.
    pub fn opt_name(&self, name: &'static str) -> Result<Option<String>, Refusal> {
        match self.opt(name)? {
            Some(v) => {
                check_name(name, &v).map_err(|e| Refusal::new("bad_field", e.to_string()))?;
                Ok(Some(v))
            }
            None => Ok(None),
        }
    }

    /// Free text (a message, a prompt): required, not blank, at most `max` bytes
    /// (`what` names the limit for the refusal, e.g. `rooms.message_max_bytes`).
    pub fn text(&self, name: &str, max: usize, what: &str) -> Result<String, Refusal> {
        checked_text(name, self.opt(name)?, max, what)
    }
}

/// The value of a field that must be there.
fn required(name: &str, v: Option<String>) -> Result<String, Refusal> {
    v.ok_or_else(|| Refusal::new("missing_field", format!("`{name}` is required")))
}

/// [`Fields::name`]'s checks on a field's value (`None`: absent or null).
pub fn checked_name(name: &'static str, v: Option<String>) -> Result<String, Refusal> {
    let v = required(name, v)?;
    check_name(name, &v).map_err(|e| Refusal::new("bad_field", e.to_string()))?;
    Ok(v)
}

/// [`Fields::text`]'s checks on a field's value (`None`: absent or null).
pub fn checked_text(
    name: &str,
    v: Option<String>,
    max: usize,
    what: &str,
) -> Result<String, Refusal> {
    let v = required(name, v)?;
    if v.trim().is_empty() {
        return Err(Refusal::new(
            "bad_field",
            format!("`{name}` must not be empty"),
        ));
    }
    if v.len() > max {
        return Err(Refusal::new(
            "message_too_long",
            format!("`{name}` is {} bytes; the most is {max} ({what})", v.len()),
        ));
    }
    Ok(v)
}

/// The body of a say or a chat read straight into its fields, borrowed where they hold
/// no escapes: every say and chat is read, and a JSON map of it cost more than the rest
/// of reading it. `None` for anything but an object whose fields of these names are
/// strings, booleans (`stream`) or null, each once (a number for `user_id`, a duplicate,
/// bad JSON): the caller then reads the body with [`object`] and [`Fields`], whose
/// refusals it gives. Other fields are ignored, as [`Fields`] ignores them.
#[derive(serde::Deserialize)]
pub struct Talk<'a> {
    #[serde(borrow, default)]
    pub user_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub username: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub message: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub room: Option<Cow<'a, str>>,
    #[serde(default)]
    pub stream: Option<bool>,
}

impl<'a> Talk<'a> {
    pub fn read(body: &'a [u8]) -> Option<Talk<'a>> {
        // Only an object: serde would also read these fields from an array.
        let first = body.iter().find(|b| !b" \t\r\n".contains(b));
        if first != Some(&b'{') {
            return None;
        }
        serde_json::from_slice(body).ok()
    }
}

/// A borrowed field's value, owned.
pub fn owned(v: Option<Cow<'_, str>>) -> Option<String> {
    v.map(Cow::into_owned)
}

/// How a JSON value's type is named in a refusal.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Compare without an early exit, so timing does not reveal the token.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn each_check_refuses_with_its_code_and_words() {
        let m = fields(json!({
            "user_id": 42, "room": "The Garden", "n": 3, "blank": "  ",
            "long": "x".repeat(10), "ctl": "a\u{7}b", "nul": null
        }));
        let f = Fields(&m);
        type Want = Result<Option<String>, (&'static str, &'static str)>;
        let cases: Vec<(Result<Option<String>, Refusal>, Want)> = vec![
            (f.opt("user_id"), Ok(Some("42".into()))),
            (f.opt("room"), Ok(Some("The Garden".into()))),
            (f.opt("nul"), Ok(None)),
            (f.opt("absent"), Ok(None)),
            (
                f.opt("n"),
                Err(("bad_field", "`n` must be a string, not a number")),
            ),
            (
                f.req("absent").map(Some),
                Err(("missing_field", "`absent` is required")),
            ),
            (
                f.req("nul").map(Some),
                Err(("missing_field", "`nul` is required")),
            ),
            (f.name("room").map(Some), Ok(Some("The Garden".into()))),
            (
                f.text("blank", 100, "x").map(Some),
                Err(("bad_field", "`blank` must not be empty")),
            ),
            (
                f.text("long", 4, "rooms.message_max_bytes").map(Some),
                Err((
                    "message_too_long",
                    "`long` is 10 bytes; the most is 4 (rooms.message_max_bytes)",
                )),
            ),
        ];
        for (got, want) in cases {
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w),
                (Err(r), Err((code, msg))) => {
                    assert_eq!((r.code, r.message.as_str()), (code, msg))
                }
                (g, w) => panic!("got {g:?}, want {w:?}"),
            }
        }
        let bad = f.name("ctl").unwrap_err();
        assert_eq!(bad.code, "bad_field");
        assert!(f.opt_name("absent").unwrap().is_none());
    }

    #[test]
    fn bodies_that_are_not_objects_are_bad_json() {
        for (body, msg) in [
            (&b""[..], "the body is empty; send a JSON object"),
            (b"[1]", "the body must be a JSON object"),
        ] {
            let r = object(body).unwrap_err();
            assert_eq!((r.code, r.message.as_str()), ("bad_json", msg));
        }
        let r = object(b"{").unwrap_err();
        assert!(r.message.starts_with("the body is not valid JSON: "), "{r}");
        assert_eq!(object(br#"{"a":1}"#).unwrap()["a"], json!(1));
    }

    #[test]
    fn a_talk_is_read_only_when_fields_would_read_the_same_values() {
        // Read straight: the same values Fields reads.
        for body in [
            r#"{"user_id":"u1","username":"Ü \"q\"","message":"hi","room":"The Garden"}"#,
            r#" {"user_id":"u1","message":"hi","room":null,"stream":true,"extra":[1,{"a":2}]}"#,
            r#"{"message":"no user"}"#,
        ] {
            let t = Talk::read(body.as_bytes()).expect(body);
            let obj = object(body.as_bytes()).unwrap();
            let f = Fields(&obj);
            for (name, got) in [
                ("user_id", &t.user_id),
                ("username", &t.username),
                ("message", &t.message),
                ("room", &t.room),
            ] {
                assert_eq!(owned(got.clone()), f.opt(name).unwrap(), "{body} {name}");
            }
            assert_eq!(t.stream, f.opt_bool("stream").unwrap(), "{body}");
        }
        // Left to Fields (and its refusals): not an object, a number for user_id, a
        // mistyped field, a duplicate, bad JSON, an empty body.
        for body in [
            r#"["u1","U","hi","The Garden"]"#,
            r#"{"user_id":42,"message":"hi"}"#,
            r#"{"user_id":"u1","stream":"yes"}"#,
            r#"{"user_id":"u1","user_id":"u2"}"#,
            r#"{"user_id":"u1""#,
            "",
        ] {
            assert!(Talk::read(body.as_bytes()).is_none(), "{body}");
        }
        // The same refusals as Fields for what Talk reads.
        let r = checked_name("user_id", None).unwrap_err();
        assert_eq!(
            (r.code, r.message.as_str()),
            ("missing_field", "`user_id` is required")
        );
        let r = checked_text("message", Some("  ".into()), 10, "x").unwrap_err();
        assert_eq!(r.code, "bad_field");
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
