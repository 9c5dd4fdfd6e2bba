//! The real `openai` Python package against the bridge's OpenAI-compatible door: models,
//! completions streamed and not, two users kept apart, the crisis text first, and errors
//! raised as the package's own exception classes.
//!
//! Needs python3 and PyPI: a venv with `openai` is built once under the target's tmp
//! directory (`WORLDBRIDGE_OPENAI_VENV` overrides) and reused while its marker matches.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

const OPENAI: &str = "openai>=1.40,<2";

fn run(cmd: &mut Command, what: &str) -> String {
    let out = (cmd.stdin(Stdio::null()).output()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn imports_work(venv: &Path) -> bool {
    (Command::new(venv.join("bin/python")).args(["-c", "import openai"]))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let dir = std::env::var_os("WORLDBRIDGE_OPENAI_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("openai-venv"));
        let marker = dir.join("worldbridge-ready");
        if std::fs::read_to_string(&marker).ok().as_deref() == Some(OPENAI) && imports_work(&dir) {
            return dir;
        }
        let _ = std::fs::remove_dir_all(&dir);
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&dir),
            "python3 -m venv",
        );
        run(
            Command::new(dir.join("bin/pip")).args([
                "install",
                "-q",
                "--disable-pip-version-check",
                OPENAI,
            ]),
            "pip install openai",
        );
        assert!(imports_work(&dir), "the new venv cannot import openai");
        std::fs::write(&marker, OPENAI).expect("write the venv marker");
        dir
    })
}

const SCRIPT: &str = r#"
import json, sys, time, openai
from openai import OpenAI

base = sys.argv[1]
client = OpenAI(base_url=base, api_key="sekrit", max_retries=0)
out = {}
out["models"] = [m.id for m in client.models.list().data]

def ask(user, text, **kw):
    return client.chat.completions.create(
        model="timmy", user=user,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}], **kw)

a1 = ask("ann", "hello there")
b1 = ask("bob", "hello there")
a2 = ask("ann", "tell me about this place")
out["plain"] = {
    "object": a1.object,
    "content": a1.choices[0].message.content,
    "finish": a1.choices[0].finish_reason,
    "usage": [a1.usage.prompt_tokens, a1.usage.completion_tokens, a1.usage.total_tokens],
    "sessions": [a1.to_dict()["worldbridge"]["session_messages"],
                 b1.to_dict()["worldbridge"]["session_messages"],
                 a2.to_dict()["worldbridge"]["session_messages"]],
}

t0 = time.monotonic()
first = None
pieces = []
finish = None
for chunk in ask("bob", "tell me about this place", stream=True):
    if not chunk.choices:
        continue
    c = chunk.choices[0]
    if c.delta.content:
        if first is None:
            first = time.monotonic() - t0
        pieces.append(c.delta.content)
    if c.finish_reason:
        finish = c.finish_reason
out["stream"] = {"pieces": pieces, "finish": finish, "first_s": first}
b3 = ask("bob", "thanks")
out["bob_after_stream"] = b3.to_dict()["worldbridge"]["session_messages"]

crisis = [c.choices[0].delta.content for c in ask("cy", "i want to kill myself", stream=True)
          if c.choices and c.choices[0].delta.content]
out["crisis_stream_first"] = crisis[0]
out["crisis_plain"] = ask("dee", "i want to kill myself").choices[0].message.content

try:
    client.chat.completions.create(model="timmy", messages=[{"role": "user", "content": "hi"}])
    out["missing_user"] = "no error"
except openai.BadRequestError as e:
    out["missing_user"] = [e.status_code, e.code, e.type]
try:
    OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
    out["wrong_key"] = "no error"
except openai.PermissionDeniedError as e:
    out["wrong_key"] = [e.status_code, e.code, e.type]
print(json.dumps(out))
"#;

#[test]
#[ignore = "needs python3 and PyPI (the openai package)"]
fn the_openai_python_package_talks_to_the_bridge_streamed_and_not() {
    let venv = venv();
    let mut cfg = test_config();
    cfg.http.token = "sekrit".into();
    cfg.agent.stream_min_chars = 1;
    let b = start_with(cfg);
    // In a directory of its own: Python puts the script's directory first on its path,
    // and a stray `http.py` in the shared temp directory would shadow the standard one.
    let dir = scratch_dir("openai-client");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let script = dir.join("openai_client.py");
    std::fs::write(&script, SCRIPT).expect("write the script");
    let base = format!("http://{}/v1", b.http);
    let out = run(
        Command::new(venv.join("bin/python"))
            .arg(&script)
            .arg(&base),
        "the openai client script",
    );
    let r: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    eprintln!("{}", serde_json::to_string_pretty(&r).unwrap());
    assert_eq!(r["models"], json!(["timmy"]));
    let plain = &r["plain"];
    assert_eq!(plain["object"], json!("chat.completion"));
    assert!(!plain["content"].as_str().unwrap().is_empty());
    assert_eq!(plain["finish"], json!("stop"));
    assert_eq!(plain["usage"], json!([0, 0, 0]));
    assert_eq!(
        plain["sessions"],
        json!([2, 2, 4]),
        "ann and bob kept apart"
    );
    let pieces = r["stream"]["pieces"].as_array().unwrap();
    assert!(pieces.len() >= 2, "streamed in parts: {pieces:?}");
    assert_eq!(r["stream"]["finish"], json!("stop"));
    assert_eq!(
        r["bob_after_stream"],
        json!(6),
        "the streamed exchange was stored"
    );
    let first = r["crisis_stream_first"].as_str().unwrap();
    assert!(first.starts_with("Are you safe right now?") && first.contains("988"));
    assert!(r["crisis_plain"]
        .as_str()
        .unwrap()
        .starts_with("Are you safe right now?"));
    assert_eq!(
        r["missing_user"],
        json!([400, "missing_field", "invalid_request_error"])
    );
    assert_eq!(
        r["wrong_key"],
        json!([403, "forbidden", "authentication_error"])
    );
}
