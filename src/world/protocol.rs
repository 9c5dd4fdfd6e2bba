//! The serde types of the line protocol's structured payloads, in one place: the
//! handshake, the commands the bridge sends a game (`act`), what a game reports back
//! (`result`, `perception`), and the checks on them. `docs/line-protocol.md`
//! is the contract this file implements.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The line protocol's major version (`hello`/`welcome` `protocol`).
pub const PROTOCOL: u64 = 1;

/// The version of the `act`/`perception` payloads.
pub const PAYLOAD_VERSION: &str = "1.0";

/// Whether a `protocol_version` string (`"1.0"`, `"1"`, `"1.3"`) is one we read: its
/// major part must not be greater than ours.
pub fn check_payload_version(v: &str) -> Result<(), String> {
    let major = v
        .split('.')
        .next()
        .and_then(|m| m.trim().parse::<u64>().ok());
    match major {
        Some(m) if m <= PROTOCOL => Ok(()),
        Some(m) => Err(format!(
            "protocol_version {v} is newer than this bridge (it reads {PAYLOAD_VERSION}, major {PROTOCOL}); \
             upgrade worldbridge (major {m} is not understood)"
        )),
        None => Err(format!(
            "protocol_version must look like \"1.0\", not {v:?}"
        )),
    }
}

/// What kind of peer a link is.
pub const LINK_KINDS: [&str; 4] = ["evennia", "tes3mp", "generic", "bridge"];
/// The kinds a game link may be (`[[line.links]]`, `[[line.dial]]`): all but the bridge.
pub const GAME_KINDS: [&str; 3] = ["evennia", "tes3mp", "generic"];

/// A point in a game's world units.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Vec3 {
    pub x: f64,
    pub y: f64,
    pub z: f64,
}

/// A heading: rotation about x and z, in radians (TES3MP keeps no y rotation for players).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    pub x: f64,
    pub z: f64,
}

/// A dynamic stat (health, magicka, fatigue).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Stat {
    pub current: f64,
    pub base: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Stats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Stat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub magicka: Option<Stat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fatigue: Option<Stat>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub ref_id: String,
    pub count: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuestEntry {
    pub quest: String,
    pub index: i64,
}

/// Someone or something near the observed player. A game may know only some of it (the
/// TES3MP server knows ref ids, not display names); what else it sends is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Nearby {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_id: Option<String>,
    /// `npc`, `creature`, `player`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance: Option<f64>,
    /// Fields of the game's own (`unique_index`, `health`, …).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Nearby {
    /// What to call it: its name, else its ref id, else "someone".
    pub fn label(&self) -> &str {
        self.name
            .as_deref()
            .or(self.ref_id.as_deref())
            .filter(|s| !s.is_empty())
            .unwrap_or("someone")
    }
}

/// What a game reports of the world around a player (seed 003's PerceptionOutput).
/// Every field is optional: an Evennia link knows rooms, not coordinates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Perception {
    #[serde(default = "payload_version")]
    pub protocol_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub player: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Vec3>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Rotation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inventory: Vec<Item>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub journal: Vec<QuestEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nearby: Vec<Nearby>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub players: Vec<String>,
    /// A weather name, or the game's numeric weather id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weather: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub game_hour: Option<f64>,
}

fn payload_version() -> String {
    PAYLOAD_VERSION.into()
}

impl Perception {
    /// Parse a `perception` message (its `type`, `id` and unknown fields are ignored, so a
    /// newer minor version still reads). A newer major version is refused.
    pub fn from_message(msg: &Map<String, Value>) -> Result<Perception, String> {
        if let Some(v) = msg.get("protocol_version") {
            match v {
                Value::String(s) => check_payload_version(s)?,
                Value::Number(n) => check_payload_version(&n.to_string())?,
                _ => return Err("protocol_version must be a string like \"1.0\"".into()),
            }
        }
        let mut m = msg.clone();
        m.remove("type");
        m.remove("id");
        serde_json::from_value(Value::Object(m)).map_err(|e| format!("bad perception: {e}"))
    }
}

/// A perception as the agent's context sees it: where, and one line of the rest.
pub fn summary(world: &str, p: &Perception) -> crate::agent::GameView {
    let mut parts = Vec::new();
    if let Some(player) = &p.player {
        parts.push(format!("you are {player}"));
    }
    if let Some(cell) = &p.cell {
        parts.push(format!("in {cell}"));
    }
    if let Some(pos) = p.position {
        parts.push(format!("at ({:.0}, {:.0}, {:.0})", pos.x, pos.y, pos.z));
    }
    if let Some(h) = p.stats.as_ref().and_then(|s| s.health) {
        parts.push(format!("health {:.0}/{:.0}", h.current, h.base));
    }
    if !p.nearby.is_empty() {
        let near: Vec<String> = p
            .nearby
            .iter()
            .take(5)
            .map(|n| match n.distance {
                Some(d) => format!("{} ({d:.0} away)", n.label()),
                None => n.label().to_string(),
            })
            .collect();
        parts.push(format!("near {}", near.join(", ")));
    }
    if let Some(h) = p.game_hour {
        parts.push(format!("game hour {h:.1}"));
    }
    crate::agent::GameView {
        world: world.to_string(),
        cell: p.cell.clone(),
        summary: parts.join("; "),
    }
}

/// What the bridge can ask a game to do (seed 003: what server Lua can do directly).
#[derive(Debug, Clone, PartialEq)]
pub enum GameCommand {
    Teleport {
        cell: String,
        pos: Option<Vec3>,
        rot: Option<Rotation>,
    },
    AddItem {
        ref_id: String,
        count: u32,
        charge: Option<f64>,
        soul: Option<String>,
    },
    RemoveItem {
        ref_id: String,
        count: u32,
    },
    Journal {
        quest: String,
        index: u32,
        actor_ref_id: Option<String>,
    },
    SetStat {
        name: String,
        value: f64,
    },
    Console {
        command: String,
    },
    Message {
        text: String,
        to: Option<String>,
    },
}

/// The actions of [`GameCommand`], by wire name.
pub const ACTIONS: [&str; 7] = [
    "teleport",
    "add_item",
    "remove_item",
    "journal",
    "set_stat",
    "console",
    "message",
];

/// Stat names `set_stat` takes, canonical spelling (TES3MP's attribute and skill names).
const DYNAMIC_STATS: [&str; 4] = ["health", "magicka", "fatigue", "level"];
const ATTRIBUTES: [&str; 8] = [
    "Strength",
    "Intelligence",
    "Willpower",
    "Agility",
    "Speed",
    "Endurance",
    "Personality",
    "Luck",
];
const SKILLS: [&str; 27] = [
    "Block",
    "Armorer",
    "MediumArmor",
    "HeavyArmor",
    "BluntWeapon",
    "LongBlade",
    "Axe",
    "Spear",
    "Athletics",
    "Enchant",
    "Destruction",
    "Alteration",
    "Illusion",
    "Conjuration",
    "Mysticism",
    "Restoration",
    "Alchemy",
    "Unarmored",
    "Security",
    "Sneak",
    "Acrobatics",
    "LightArmor",
    "ShortBlade",
    "Marksman",
    "Mercantile",
    "Speechcraft",
    "HandToHand",
];

/// The canonical name of a stat, attribute or skill (`"long blade"` → `"LongBlade"`).
pub fn canonical_stat(name: &str) -> Option<&'static str> {
    let squash = |s: &str| {
        s.chars()
            .filter(|c| c.is_alphanumeric())
            .collect::<String>()
            .to_lowercase()
    };
    let want = squash(name);
    DYNAMIC_STATS
        .iter()
        .chain(ATTRIBUTES.iter())
        .chain(SKILLS.iter())
        .find(|n| squash(n) == want)
        .copied()
}

/// Longest string argument of a command, in bytes.
const ARG_MAX_BYTES: usize = 4096;

/// Reads the fields of an `args` object with clear messages; unknown fields are refused.
struct Args<'a> {
    action: &'a str,
    obj: &'a Map<String, Value>,
}

impl Args<'_> {
    fn only(&self, allowed: &[&str]) -> Result<(), String> {
        match self.obj.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(format!(
                "{}: unknown argument `{k}` (it takes {})",
                self.action,
                allowed.join(", ")
            )),
            None => Ok(()),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>, String> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => {
                Err(format!("{}: `{key}` must not be empty", self.action))
            }
            Some(Value::String(s)) if s.len() > ARG_MAX_BYTES || s.contains(['\0', '\n']) => {
                Err(format!(
                    "{}: `{key}` must be at most {ARG_MAX_BYTES} bytes on one line",
                    self.action
                ))
            }
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("{}: `{key}` must be a string", self.action)),
        }
    }

    fn req_string(&self, key: &str) -> Result<String, String> {
        self.string(key)?
            .ok_or_else(|| format!("{}: `{key}` is required", self.action))
    }

    fn number(&self, key: &str) -> Result<Option<f64>, String> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(f) if f.is_finite() => Ok(Some(f)),
                _ => Err(format!("{}: `{key}` must be a finite number", self.action)),
            },
            Some(_) => Err(format!("{}: `{key}` must be a number", self.action)),
        }
    }

    fn count(&self, key: &str, min: u64, default: Option<u32>) -> Result<u32, String> {
        match self.obj.get(key) {
            None | Some(Value::Null) => {
                default.ok_or_else(|| format!("{}: `{key}` is required", self.action))
            }
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) if v >= min && v <= u64::from(u32::MAX) => Ok(v as u32),
                _ => Err(format!(
                    "{}: `{key}` must be a whole number of at least {min}",
                    self.action
                )),
            },
            Some(_) => Err(format!("{}: `{key}` must be a whole number", self.action)),
        }
    }

    fn point<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        shape: &str,
    ) -> Result<Option<T>, String> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value::<T>(v.clone())
                .map(Some)
                .map_err(|_| format!("{}: `{key}` must be {shape} with numbers", self.action)),
        }
    }
}

impl GameCommand {
    /// Check an `action` and its `args` (from HTTP or an agent) before anything is sent.
    pub fn parse(action: &str, args: &Value) -> Result<GameCommand, String> {
        let empty = Map::new();
        let obj = match args {
            Value::Object(m) => m,
            Value::Null => &empty,
            _ => return Err(format!("{action}: `args` must be an object")),
        };
        let a = Args { action, obj };
        let cmd = match action {
            "teleport" => {
                a.only(&["cell", "pos", "rot"])?;
                let pos: Option<Vec3> = a.point("pos", "{x, y, z}")?;
                let rot: Option<Rotation> = a.point("rot", "{x, z}")?;
                let finite = pos
                    .is_none_or(|p| p.x.is_finite() && p.y.is_finite() && p.z.is_finite())
                    && rot.is_none_or(|r| r.x.is_finite() && r.z.is_finite());
                if !finite {
                    return Err("teleport: `pos` and `rot` must be finite".into());
                }
                GameCommand::Teleport {
                    cell: a.req_string("cell")?,
                    pos,
                    rot,
                }
            }
            "add_item" => {
                a.only(&["ref_id", "count", "charge", "soul"])?;
                GameCommand::AddItem {
                    ref_id: a.req_string("ref_id")?,
                    count: a.count("count", 1, Some(1))?,
                    charge: a.number("charge")?,
                    soul: a.string("soul")?,
                }
            }
            "remove_item" => {
                a.only(&["ref_id", "count"])?;
                GameCommand::RemoveItem {
                    ref_id: a.req_string("ref_id")?,
                    count: a.count("count", 1, Some(1))?,
                }
            }
            "journal" => {
                a.only(&["quest", "index", "actor_ref_id"])?;
                GameCommand::Journal {
                    quest: a.req_string("quest")?,
                    index: a.count("index", 0, None)?,
                    actor_ref_id: a.string("actor_ref_id")?,
                }
            }
            "set_stat" => {
                a.only(&["name", "value"])?;
                let name = a.req_string("name")?;
                let canonical = canonical_stat(&name).ok_or_else(|| {
                    format!(
                        "set_stat: unknown stat {name:?} (health, magicka, fatigue, level, an attribute such as Strength, or a skill such as LongBlade)"
                    )
                })?;
                let value = a.number("value")?.ok_or("set_stat: `value` is required")?;
                GameCommand::SetStat {
                    name: canonical.to_string(),
                    value,
                }
            }
            "console" => {
                a.only(&["command"])?;
                GameCommand::Console {
                    command: a.req_string("command")?,
                }
            }
            "message" => {
                a.only(&["text", "to"])?;
                GameCommand::Message {
                    text: a.req_string("text")?,
                    to: a.string("to")?,
                }
            }
            other => {
                return Err(format!(
                    "unknown action {other:?}; the actions are {}",
                    ACTIONS.join(", ")
                ))
            }
        };
        Ok(cmd)
    }

    pub fn action(&self) -> &'static str {
        match self {
            GameCommand::Teleport { .. } => "teleport",
            GameCommand::AddItem { .. } => "add_item",
            GameCommand::RemoveItem { .. } => "remove_item",
            GameCommand::Journal { .. } => "journal",
            GameCommand::SetStat { .. } => "set_stat",
            GameCommand::Console { .. } => "console",
            GameCommand::Message { .. } => "message",
        }
    }

    /// The `args` object as it goes on the wire.
    pub fn args(&self) -> Value {
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            if !v.is_null() {
                m.insert(k.to_string(), v);
            }
        };
        match self {
            GameCommand::Teleport { cell, pos, rot } => {
                put("cell", json!(cell));
                put("pos", json!(pos));
                put("rot", json!(rot));
            }
            GameCommand::AddItem {
                ref_id,
                count,
                charge,
                soul,
            } => {
                put("ref_id", json!(ref_id));
                put("count", json!(count));
                put("charge", json!(charge));
                put("soul", json!(soul));
            }
            GameCommand::RemoveItem { ref_id, count } => {
                put("ref_id", json!(ref_id));
                put("count", json!(count));
            }
            GameCommand::Journal {
                quest,
                index,
                actor_ref_id,
            } => {
                put("quest", json!(quest));
                put("index", json!(index));
                put("actor_ref_id", json!(actor_ref_id));
            }
            GameCommand::SetStat { name, value } => {
                put("name", json!(name));
                put("value", json!(value));
            }
            GameCommand::Console { command } => put("command", json!(command)),
            GameCommand::Message { text, to } => {
                put("text", json!(text));
                put("to", json!(to));
            }
        }
        Value::Object(m)
    }

    /// The `act` message for a game.
    pub fn to_message(&self, id: &str, player: Option<&str>) -> Value {
        let mut m = json!({
            "type": "act",
            "id": id,
            "protocol_version": PAYLOAD_VERSION,
            "action": self.action(),
            "args": self.args(),
        });
        if let (Some(p), Some(obj)) = (player, m.as_object_mut()) {
            obj.insert("player".into(), json!(p));
        }
        m
    }
}

/// What a game answered to a [`GameCommand`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionResult {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ActionResult {
    /// Read a `result` message; a malformed one counts as a failed action.
    pub fn from_message(msg: &Map<String, Value>) -> ActionResult {
        let ok = msg.get("ok").and_then(Value::as_bool);
        let text = |k: &str| msg.get(k).and_then(Value::as_str).map(str::to_string);
        match ok {
            Some(ok) => ActionResult {
                ok,
                data: msg.get("data").cloned().filter(|d| !d.is_null()),
                code: text("code"),
                error: text("error"),
            },
            None => ActionResult {
                ok: false,
                data: None,
                code: Some("bad_result".into()),
                error: Some("the game's result had no boolean `ok`".into()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_round_trip() {
        let cases = [
            ("teleport", json!({"cell": "Balmora, Temple"})),
            (
                "teleport",
                json!({"cell": "-3, -2", "pos": {"x": 1.5, "y": 2, "z": -3}, "rot": {"x": 0, "z": 1.57}}),
            ),
            ("add_item", json!({"ref_id": "gold_001", "count": 100})),
            ("remove_item", json!({"ref_id": "gold_001", "count": 5})),
            (
                "journal",
                json!({"quest": "a1_1_findspymaster", "index": 10}),
            ),
            ("set_stat", json!({"name": "LongBlade", "value": 50})),
            ("console", json!({"command": "tgm"})),
            ("message", json!({"text": "hello", "to": "Alice"})),
        ];
        for (action, args) in cases {
            let cmd = GameCommand::parse(action, &args).unwrap_or_else(|e| panic!("{action}: {e}"));
            assert_eq!(cmd.action(), action);
            let again = GameCommand::parse(action, &cmd.args()).expect("its own args parse");
            assert_eq!(again, cmd);
        }
    }

    #[test]
    fn defaults_and_canonical_names() {
        assert_eq!(
            GameCommand::parse("add_item", &json!({"ref_id": "x"})).unwrap(),
            GameCommand::AddItem {
                ref_id: "x".into(),
                count: 1,
                charge: None,
                soul: None
            }
        );
        assert_eq!(canonical_stat("long blade"), Some("LongBlade"));
        assert_eq!(canonical_stat("STRENGTH"), Some("Strength"));
        assert_eq!(canonical_stat("Health"), Some("health"));
        assert_eq!(canonical_stat("charisma"), None);
    }

    #[test]
    fn bad_commands_are_refused_with_a_reason() {
        let cases = [
            ("fly", json!({}), "unknown action"),
            ("teleport", json!({}), "`cell` is required"),
            ("teleport", json!({"cell": 5}), "`cell` must be a string"),
            ("teleport", json!({"cell": " "}), "must not be empty"),
            (
                "teleport",
                json!({"cell": "a", "pos": {"x": 1}}),
                "`pos` must be {x, y, z}",
            ),
            (
                "teleport",
                json!({"cell": "a", "speed": 1}),
                "unknown argument `speed`",
            ),
            ("add_item", json!({"ref_id": "x", "count": 0}), "at least 1"),
            (
                "add_item",
                json!({"ref_id": "x", "count": "3"}),
                "whole number",
            ),
            (
                "remove_item",
                json!({"ref_id": "x", "count": -1}),
                "at least 1",
            ),
            ("journal", json!({"quest": "q"}), "`index` is required"),
            (
                "set_stat",
                json!({"name": "charm", "value": 1}),
                "unknown stat",
            ),
            ("set_stat", json!({"name": "health"}), "`value` is required"),
            ("console", json!({"command": "a\nb"}), "one line"),
            ("message", json!("hi"), "must be an object"),
        ];
        for (action, args, want) in cases {
            let err = GameCommand::parse(action, &args).expect_err(action);
            assert!(
                err.contains(want),
                "{action} {args}: {err:?} lacks {want:?}"
            );
        }
    }

    #[test]
    fn act_message_shape() {
        let cmd = GameCommand::parse("teleport", &json!({"cell": "Balmora, Temple"})).unwrap();
        assert_eq!(
            cmd.to_message("wb-1", Some("Timmy")),
            json!({"type": "act", "id": "wb-1", "protocol_version": "1.0", "action": "teleport",
                   "args": {"cell": "Balmora, Temple"}, "player": "Timmy"})
        );
    }

    #[test]
    fn perception_reads_and_refuses_newer_majors() {
        let msg = json!({"type": "perception", "id": "wb-2", "protocol_version": "1.2",
            "cell": "Balmora, Temple", "position": {"x": 1.0, "y": 2.0, "z": 3.0},
            "stats": {"health": {"current": 40, "base": 50}},
            "inventory": [{"ref_id": "gold_001", "count": 3}],
            "nearby": [{"name": "Fargoth", "distance": 12.5}], "future_field": true});
        let p = Perception::from_message(msg.as_object().unwrap()).expect("reads");
        assert_eq!(p.cell.as_deref(), Some("Balmora, Temple"));
        assert_eq!(p.stats.unwrap().health.unwrap().current, 40.0);
        assert_eq!(p.nearby[0].label(), "Fargoth");
        let partial =
            json!({"type": "perception", "nearby": [{"ref_id": "fargoth", "unique_index": "0-1"}]});
        let p = Perception::from_message(partial.as_object().unwrap())
            .expect("a name and a distance are optional");
        assert_eq!(p.nearby[0].label(), "fargoth");
        assert_eq!(
            p.nearby[0].extra["unique_index"], "0-1",
            "the game's own fields are kept"
        );
        assert!(summary("mw", &p).summary.contains("near fargoth"));
        let newer = json!({"type": "perception", "protocol_version": "2.0"});
        let err = Perception::from_message(newer.as_object().unwrap()).unwrap_err();
        assert!(err.contains("newer than this bridge"), "{err}");
        assert!(check_payload_version("1").is_ok());
        assert!(check_payload_version("x").is_err());
    }

    #[test]
    fn results_read_leniently() {
        let r = ActionResult::from_message(
            json!({"ok": true, "data": {"cell": "A"}})
                .as_object()
                .unwrap(),
        );
        assert!(r.ok);
        let bad = ActionResult::from_message(json!({"ok": "yes"}).as_object().unwrap());
        assert!(!bad.ok);
        assert_eq!(bad.code.as_deref(), Some("bad_result"));
    }
}
