//! The docs cannot drift from the code. Every key of `Config` has a row in
//! docs/operations.md with its default; every route of the router (`api::ROUTES`) has a row
//! in docs/http-api.md's route index that links to the page documenting it, and that page
//! names it; the schema version the docs state is the store's; and every relative link
//! between README.md and docs/ resolves, anchors included. The keys and routes come from
//! the code (serde and the router's own table), never from a list kept here.

mod common;

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use worldbridge::config::Config;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// One config key: its dotted name, the array of tables it sits in (`line.dial` for
/// `line.dial.world`), and its default as TOML (none inside an array of tables).
#[derive(Debug)]
struct Key {
    name: String,
    table_array: Option<String>,
    field: String,
    default: Option<String>,
}

/// A value as it is written in TOML (and in the docs' default column).
fn toml_text(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(toml_text).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// Walk `default` (the serialized `Config::default()`); an array whose element in
/// `sample` is a table is an array of tables, walked through that element.
fn walk(
    prefix: &str,
    default: &Value,
    sample: &Value,
    table_array: Option<&str>,
    out: &mut Vec<Key>,
) {
    let Value::Object(map) = default else {
        return;
    };
    for (k, v) in map {
        let name = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let s = sample.get(k).unwrap_or(&Value::Null);
        match (v, s) {
            (Value::Object(_), _) => walk(&name, v, s, table_array, out),
            (Value::Array(_), Value::Array(items))
                if items.first().is_some_and(Value::is_object) =>
            {
                walk(&name, &items[0], &items[0], Some(&name), out)
            }
            _ => out.push(Key {
                field: k.clone(),
                default: table_array.is_none().then(|| toml_text(v)),
                table_array: table_array.map(str::to_string),
                name,
            }),
        }
    }
}

/// Every key a config file may set, derived from the `Config` types through serde. The
/// arrays of tables are empty by default, so a config with one entry in each (only
/// their required fields) shows their fields, defaults filled in by serde.
fn config_keys() -> Vec<Key> {
    let default = serde_json::to_value(Config::default()).expect("Config serializes");
    let sample = Config::from_toml(
        r#"
        [[line.dial]]
        world = "w"
        addr = "127.0.0.1:1"
        [[federation.peers]]
        world = "p"
        url = "http://127.0.0.1:1"
        [[federation.worlds]]
        world = "r"
        public_key = "ed25519:k"
        [[gateway.agents]]
        id = "a"
        token = "t"
        [[line.links]]
        world = "l"
        token = "t"
        "#,
    )
    .expect("the sample config parses");
    let sample = serde_json::to_value(sample).expect("Config serializes");
    let mut keys = Vec::new();
    walk("", &default, &sample, None, &mut keys);
    // `[cluster]` is absent by default: its keys, from its own defaults.
    let cluster = serde_json::to_value(worldbridge::config::ClusterConfig::default())
        .expect("ClusterConfig serializes");
    walk("cluster", &cluster, &cluster, None, &mut keys);
    keys
}

#[test]
fn every_config_key_is_documented_with_its_default() {
    let ops = read("docs/operations.md");
    let keys = config_keys();
    assert!(keys.len() > 60, "the walk found the keys: {keys:?}");
    let mut missing = Vec::new();
    for key in &keys {
        let row = match &key.table_array {
            None => {
                let head = format!("| `{}` |", key.name);
                ops.lines().find(|l| l.starts_with(&head))
            }
            Some(array) => {
                let head = format!("| `[[{array}]]` `{}` |", key.field);
                ops.lines().find(|l| l.starts_with(&head))
            }
        };
        let Some(row) = row else {
            missing.push(format!("no row for `{}`", key.name));
            continue;
        };
        if let Some(default) = &key.default {
            let cell = row.split('|').nth(2).unwrap_or("").trim();
            if !cell.starts_with(&format!("`{default}`")) {
                missing.push(format!(
                    "`{}`: the default is `{default}`, the docs say {cell}",
                    key.name
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/operations.md's configuration table is out of step with Config:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn the_documented_schema_version_is_the_stores() {
    let ops = read("docs/operations.md");
    let said = format!(
        "the current version is {}",
        worldbridge::store::SCHEMA_VERSION
    );
    assert!(
        ops.contains(&said),
        "docs/operations.md must say \"{said}\" (src/store/mod.rs SCHEMA_VERSION)"
    );
}

/// `/bridge/world/:room` as the docs write it: `/bridge/world/<room>`.
fn shown(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|seg| match seg.strip_prefix(':') {
            Some(name) => format!("<{name}>"),
            None => seg.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn every_route_is_in_the_http_api_index_with_a_link_to_its_page() {
    let api = read("docs/http-api.md");
    let docs = root().join("docs");
    let mut problems = Vec::new();
    let mut known = BTreeSet::new();
    for (pattern, method) in worldbridge::doors::http::ROUTES {
        let path = shown(pattern);
        let head = format!("| `{method} {path}` |");
        known.insert(head.clone());
        let Some(row) = api.lines().find(|l| l.starts_with(&head)) else {
            problems.push(format!("no row `{method} {path}` in the route index"));
            continue;
        };
        let links = links_in(row);
        if links.is_empty() {
            problems.push(format!("the row of `{method} {path}` links to no page"));
        }
        for target in links {
            let (file, _) = target.split_once('#').unwrap_or((&target, ""));
            if file.is_empty() || file == "http-api.md" {
                continue;
            }
            match std::fs::read_to_string(docs.join(file)) {
                Ok(page) if page.contains(&path) => {}
                Ok(_) => problems.push(format!(
                    "{file} (linked for `{method} {path}`) never names {path}"
                )),
                Err(_) => problems.push(format!(
                    "`{method} {path}` links to {file}, which does not exist"
                )),
            }
        }
    }
    // And no row for a route the router does not have.
    for line in api
        .lines()
        .filter(|l| l.starts_with("| `GET /") || l.starts_with("| `POST /"))
    {
        if !known.iter().any(|h| line.starts_with(h.as_str())) {
            problems.push(format!(
                "a row for a route the router does not have: {line}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/http-api.md is out of step with api::ROUTES:\n  {}",
        problems.join("\n  ")
    );
}

/// The router serves every route of the table the docs are checked against: no entry of
/// `ROUTES` falls through to "no such route".
#[test]
fn the_router_serves_every_route_in_its_table() {
    let bridge = common::start();
    for (pattern, method) in worldbridge::doors::http::ROUTES {
        let path = pattern
            .replace(":room", "The%20Threshold")
            .replace(":world", "morrowind");
        let body = (*method == "POST").then_some("{}");
        let resp = common::call(bridge.http, method, &path, body);
        let code = serde_json::from_slice::<Value>(&resp.body)
            .ok()
            .and_then(|v| v.get("code").and_then(Value::as_str).map(str::to_string));
        assert_ne!(
            code.as_deref(),
            Some("not_found"),
            "{method} {path} is in ROUTES but the router does not serve it: {} {}",
            resp.status,
            resp.text()
        );
    }
}

/// The targets of the Markdown links `](target)` in `text`.
fn links_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            let target = &rest[..end];
            if !target.contains(char::is_whitespace) {
                out.push(target.to_string());
            }
            rest = &rest[end..];
        }
    }
    out
}

/// The lines of a Markdown file outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens;
/// a repeated heading gets `-1`, `-2`, …
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for line in prose(text) {
        let Some(title) = line.strip_prefix('#') else {
            continue;
        };
        let title = title.trim_start_matches('#');
        if !title.starts_with(' ') {
            continue;
        }
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut unique = slug.clone();
        let mut n = 0;
        while seen.contains(&unique) {
            n += 1;
            unique = format!("{slug}-{n}");
        }
        seen.insert(unique);
    }
    seen
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.sort();
    files.extend(pages);
    files
}

/// Where a link from `from` to `target` lands, and the anchor it names.
fn resolve(from: &Path, target: &str) -> (PathBuf, Option<String>) {
    let (file, anchor) = match target.split_once('#') {
        Some((f, a)) => (f, Some(a.to_string())),
        None => (target, None),
    };
    let path = if file.is_empty() {
        from.to_path_buf()
    } else {
        from.parent().expect("a file has a directory").join(file)
    };
    (path, anchor)
}

#[test]
fn every_relative_link_between_the_docs_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).expect("readable");
        let name = file
            .strip_prefix(root())
            .unwrap_or(&file)
            .display()
            .to_string();
        for line in prose(&text) {
            for target in links_in(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (path, anchor) = resolve(&file, &target);
                if !path.exists() {
                    broken.push(format!("{name}: ]({target}): no such file"));
                    continue;
                }
                let Some(anchor) = anchor else { continue };
                if path.extension().is_none_or(|x| x != "md") {
                    continue;
                }
                let page = std::fs::read_to_string(&path).expect("readable");
                if !anchors(&page).contains(&anchor) {
                    broken.push(format!("{name}: ]({target}): no heading with that anchor"));
                }
            }
        }
    }
    assert!(checked > 50, "the check saw the links ({checked})");
    assert!(
        broken.is_empty(),
        "broken links:\n  {}",
        broken.join("\n  ")
    );
}

#[test]
fn every_page_says_who_it_is_for_and_links_to_the_map() {
    for file in markdown_files().into_iter().skip(1) {
        let text = std::fs::read_to_string(&file).expect("readable");
        let name = file.display().to_string();
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        assert!(
            lines.next().is_some_and(|l| l.starts_with("# ")),
            "{name} starts with its title"
        );
        assert!(
            lines.next().is_some_and(|l| l.starts_with("For ")),
            "{name}: the first sentence says who the page is for"
        );
        assert!(
            text.contains("](../README.md#documentation)"),
            "{name} links back to the map of the docs"
        );
        let map = read("README.md");
        let page = file
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or_default();
        assert!(
            map.contains(&format!("](docs/{page})")),
            "README.md's map lists docs/{page}"
        );
    }
}
