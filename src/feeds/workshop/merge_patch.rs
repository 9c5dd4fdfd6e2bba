//! JSON Merge Patch (RFC 7386): [`diff`] computes the patch that turns one state into
//! another, [`apply`] applies one. The Workshop feed sends the patch as `state_diff`.
//!
//! A merge patch cannot say "set this key to null" (null means "remove"), and it replaces
//! arrays whole. [`diff_exact`] therefore checks its own work and says when only the
//! full state describes the change.

use serde_json::{Map, Value};

/// The merge patch from `old` to `new`; `None` when they are equal.
pub fn diff(old: &Value, new: &Value) -> Option<Value> {
    if old == new {
        return None;
    }
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut patch = Map::new();
            for key in o.keys() {
                if !n.contains_key(key) {
                    patch.insert(key.clone(), Value::Null);
                }
            }
            for (key, nv) in n {
                match o.get(key) {
                    Some(ov) => {
                        if let Some(p) = diff(ov, nv) {
                            patch.insert(key.clone(), p);
                        }
                    }
                    None => {
                        patch.insert(key.clone(), nv.clone());
                    }
                }
            }
            Some(Value::Object(patch))
        }
        // Not two objects: the new value replaces the old one wholesale.
        _ => Some(new.clone()),
    }
}

/// Apply `patch` to `target` (RFC 7386 §2).
pub fn apply(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (key, pv) in p {
            if pv.is_null() {
                t.remove(key);
            } else {
                apply(t.entry(key.clone()).or_insert(Value::Null), pv);
            }
        }
    }
}

/// What a change from `old` to `new` looks like on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Same,
    /// This merge patch turns `old` into exactly `new`.
    Patch(Value),
    /// Only the whole new state says it (a null value in `new`, or a non-object state).
    Full,
}

/// [`diff`], checked: the patch applied to `old` must give `new`.
pub fn diff_exact(old: &Value, new: &Value) -> Change {
    let Some(patch) = diff(old, new) else {
        return Change::Same;
    };
    if !patch.is_object() {
        return Change::Full;
    }
    let mut check = old.clone();
    apply(&mut check, &patch);
    if check == *new {
        Change::Patch(patch)
    } else {
        Change::Full
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The examples of RFC 7386 §3 (target, patch, result), applied.
    #[test]
    fn rfc_7386_examples_apply() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (target, patch, want) in cases {
            let mut t = target.clone();
            apply(&mut t, &patch);
            assert_eq!(t, want, "{target} + {patch}");
        }
    }

    #[test]
    fn diff_removes_with_null_and_recurses_into_objects() {
        let old = json!({
            "mood": "focused",
            "tasks": ["wall", "gate"],
            "room": {"light": "dim", "fire": true, "items": {"hammer": 1}},
            "gone": 1
        });
        let new = json!({
            "mood": "contemplative",
            "tasks": ["wall", "gate", "tower"],
            "room": {"light": "dim", "items": {"hammer": 1, "chisel": 2}},
            "new": {"x": [1, {"y": 2}]}
        });
        let patch = diff(&old, &new).unwrap();
        assert_eq!(
            patch,
            json!({
                "gone": null,
                "mood": "contemplative",
                "tasks": ["wall", "gate", "tower"],
                "room": {"fire": null, "items": {"chisel": 2}},
                "new": {"x": [1, {"y": 2}]}
            })
        );
        let mut t = old.clone();
        apply(&mut t, &patch);
        assert_eq!(t, new);
        assert_eq!(diff(&new, &new), None);
    }

    #[test]
    fn arrays_are_replaced_whole_even_when_one_element_changes() {
        let patch = diff(&json!({"a": [1, 2, 3]}), &json!({"a": [1, 2, 4]})).unwrap();
        assert_eq!(patch, json!({"a": [1, 2, 4]}));
    }

    #[test]
    fn exact_diff_falls_back_to_full_where_a_patch_cannot_say_it() {
        let old = json!({"a": 1, "b": {"c": 2}});
        assert_eq!(diff_exact(&old, &old), Change::Same);
        assert_eq!(
            diff_exact(&old, &json!({"a": 1, "b": {"c": 3}})),
            Change::Patch(json!({"b": {"c": 3}}))
        );
        // Setting a value to null reads as "remove" in a merge patch.
        assert_eq!(
            diff_exact(&old, &json!({"a": null, "b": {"c": 2}})),
            Change::Full
        );
        assert_eq!(
            diff_exact(&old, &json!({"a": 1, "b": {"c": null}})),
            Change::Full
        );
        // A state that is not an object.
        assert_eq!(diff_exact(&old, &json!([1])), Change::Full);
    }

    /// Round trip over many pairs built from a small alphabet of values.
    #[test]
    fn diff_then_apply_gives_the_new_state() {
        let values = [
            json!(1),
            json!("s"),
            json!([1, {"a": 1}]),
            json!({"x": 1}),
            json!({"x": {"y": [2]}, "z": false}),
            json!({}),
        ];
        for a in &values {
            for b in &values {
                for c in &values {
                    let old = json!({"k": a, "m": {"n": b}});
                    let new = json!({"k": b, "m": {"n": c}, "extra": a});
                    match diff_exact(&old, &new) {
                        Change::Same => assert_eq!(old, new),
                        Change::Patch(p) => {
                            let mut t = old.clone();
                            apply(&mut t, &p);
                            assert_eq!(t, new, "{old} -> {new} via {p}");
                        }
                        Change::Full => panic!("no nulls here: {old} -> {new}"),
                    }
                }
            }
        }
    }
}
