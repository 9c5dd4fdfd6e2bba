//! The command line: `serve` (the default), `export`, `import`, `--help`, `--version`.
//!
//! Parsed by hand (the grammar is small): every flag takes `--flag VALUE` or
//! `--flag=VALUE`, and a bad flag or value is one sentence naming it. Turning the parsed
//! flags into a [`Config`](crate::config::Config) is `Config::load`'s job.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::AGENT_BACKENDS;

pub use crate::config::ServeArgs;

/// What the process was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Run the bridge.
    Serve(ServeArgs),
    /// Write the world state as JSON to `out`, or to stdout.
    Export {
        config: Option<PathBuf>,
        data_dir: Option<String>,
        out: Option<PathBuf>,
    },
    /// Load world state from a JSON export.
    Import {
        config: Option<PathBuf>,
        file: PathBuf,
        data_dir: Option<String>,
        force: bool,
    },
    /// Print this world's public key (creating the key if there is none).
    Key {
        config: Option<PathBuf>,
        data_dir: Option<String>,
    },
    /// Run the crisis detector over labelled eval files and print the figures.
    CrisisEval {
        /// TSV eval files; empty means `fixtures/crisis/eval/*.tsv` under the current dir.
        files: Vec<PathBuf>,
        /// `--rules FILE`: an extra rule file, as `agent.crisis_file` would add.
        rules: Option<PathBuf>,
    },
    /// Train the crisis model and write its weights.
    CrisisTrain {
        /// TSV training files; empty means `fixtures/crisis/eval/train*.tsv`.
        files: Vec<PathBuf>,
        /// `--out FILE`; `None` means `fixtures/crisis/model.tsv`.
        out: Option<PathBuf>,
    },
    /// Print [`USAGE`].
    Help,
    /// Print the version.
    Version,
}

/// The full `--help` text.
pub const USAGE: &str = "\
worldbridge: one process per world that joins an AI agent, game worlds and people.

USAGE:
    worldbridge [serve] [--config FILE] [--http ADDR]... [--line ADDR]... [--world ID]
                        [--data-dir DIR | --memory] [--agent builtin|openai|command]
    worldbridge export [--config FILE] [--data-dir DIR] [--out FILE]
    worldbridge import FILE [--config FILE] [--data-dir DIR] [--force]
    worldbridge crisis-eval [FILE]... [--rules FILE]
    worldbridge crisis-train [FILE]... [--out FILE]
    worldbridge --help | --version

COMMANDS:
    serve            Run the bridge (the default when no command is given).
    export           Write this world's state as JSON to --out FILE, or to stdout.
    import FILE      Load world state from FILE, a JSON export.
    key              Print this world's public key, ed25519:<base64>, for the peers' config
                     (creates the key in the data directory if there is none; safe while a
                     bridge runs there).
    crisis-eval      Run the crisis detector over labelled TSV files (default:
                     fixtures/crisis/eval/*.tsv under the current directory) and print
                     recall, false positives, per-kind figures, every miss and false alarm,
                     and the cost per message. --rules FILE adds a rule file (the format
                     of agent.crisis_file).
    crisis-train     Train the crisis detector's classifier on labelled TSV files (default:
                     fixtures/crisis/eval/train*.tsv), print its cross-validated figures and
                     write the weights to --out FILE (default: fixtures/crisis/model.tsv).

FLAGS (each takes `--flag VALUE` or `--flag=VALUE`):
    --config FILE    Read settings from this TOML file (default: $WORLDBRIDGE_CONFIG, else none).
    --http ADDR      Serve HTTP and WebSocket on ADDR, e.g. 127.0.0.1:4004 or localhost:4004
                     (a name binds every address it resolves to). Repeat for more.
                     Replaces the default listeners 127.0.0.1:4004 and 127.0.0.1:8765.
    --line ADDR      Accept line-protocol (NDJSON) links on ADDR. Repeat for more.
                     Replaces the default listener 127.0.0.1:4005.
    --world ID       This world's id: letters, digits, '_', '.', '-' (default: local).
    --data-dir DIR   Keep durable state in DIR (default: ./worldbridge-data).
    --memory         Keep everything in memory; nothing is written to disk.
    --agent BACKEND  builtin (offline, the default), openai (any OpenAI-compatible server)
                     or command (a subprocess speaking JSON lines).
    --out FILE       export: write to FILE instead of stdout.
    --force          import: overwrite state already in the data directory.
    -h, --help       Print this help.
    -V, --version    Print the version.

ENVIRONMENT (an empty variable counts as unset):
    WORLDBRIDGE_CONFIG    Config file path, when --config is not given.
    WORLDBRIDGE_WORLD     World id (like --world).
    WORLDBRIDGE_DATA_DIR  Data directory (like --data-dir).
    WORLDBRIDGE_AGENT     Agent backend (like --agent).
    TIMMY_BRIDGE_HOST     IP address of the first HTTP listener (the others stay).
    TIMMY_BRIDGE_PORT     Port of the first HTTP listener (the others stay).
    RUST_LOG              Log filter for stderr, e.g. info or worldbridge=debug.

Precedence: flags > environment > config file > built-in defaults.
A non-loopback address is refused unless its surface has a token (http.token for
--http, line.token for --line) or the config sets allow_public_without_token = true.
Every config file key and its default is listed in docs/operations.md.
";

/// Parse the arguments WITHOUT argv[0]. No arguments, or a leading flag, means `serve`;
/// the word `serve` is optional. Errors are one sentence naming the bad flag or value.
pub fn parse(args: &[String]) -> Result<Command, String> {
    match args.first().map(String::as_str) {
        None => Ok(Command::Serve(ServeArgs::default())),
        Some("serve") => parse_serve(&args[1..]),
        Some("export") => parse_export(&args[1..]),
        Some("import") => parse_import(&args[1..]),
        Some("crisis-eval") => parse_crisis_eval(&args[1..]),
        Some("crisis-train") => parse_crisis_train(&args[1..]),
        Some("key") => parse_key(&args[1..]),
        Some(first) if first.starts_with('-') => parse_serve(args),
        Some(other) => Err(format!(
            "unknown command '{other}': expected serve, export, import, key, crisis-eval or \
             crisis-train"
        )),
    }
}

/// One command-line word, split into a flag (with its `=value`, if any) or a positional.
enum Arg<'a> {
    Flag {
        name: &'a str,
        inline: Option<&'a str>,
    },
    Positional(&'a str),
}

/// A cursor over the words of one command.
struct Words<'a> {
    words: &'a [String],
    at: usize,
}

impl<'a> Words<'a> {
    fn new(words: &'a [String]) -> Self {
        Words { words, at: 0 }
    }

    fn next_arg(&mut self) -> Option<Arg<'a>> {
        let word = self.words.get(self.at)?.as_str();
        self.at += 1;
        if let Some(long) = word.strip_prefix("--").filter(|rest| !rest.is_empty()) {
            let (name, inline) = match long.split_once('=') {
                Some((name, value)) => (&word[..name.len() + 2], Some(value)),
                None => (word, None),
            };
            Some(Arg::Flag { name, inline })
        } else if word.len() > 1 && word.starts_with('-') {
            Some(Arg::Flag {
                name: word,
                inline: None,
            })
        } else {
            Some(Arg::Positional(word))
        }
    }

    /// The value of `flag`: its `=value`, else the next word unless that is another flag.
    fn value(
        &mut self,
        flag: &str,
        inline: Option<&'a str>,
        what: &str,
    ) -> Result<&'a str, String> {
        let value = match inline {
            Some(v) => Some(v),
            None => match self.words.get(self.at) {
                Some(next) if !next.starts_with('-') => {
                    self.at += 1;
                    Some(next.as_str())
                }
                _ => None,
            },
        };
        match value {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(format!("{flag} needs a value ({what})")),
        }
    }
}

/// Flags every command understands, plus the error for an unknown one.
fn common_flag(name: &str, command: &str) -> Result<Command, String> {
    match name {
        "--help" | "-h" => Ok(Command::Help),
        "--version" | "-V" => Ok(Command::Version),
        _ => Err(format!("unknown flag '{name}' for `worldbridge {command}`")),
    }
}

fn no_value(name: &str, inline: Option<&str>) -> Result<(), String> {
    match inline {
        Some(_) => Err(format!("{name} takes no value")),
        None => Ok(()),
    }
}

fn set_once<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("{name} is given twice"));
    }
    *slot = Some(value);
    Ok(())
}

/// `--http`/`--line`'s value: an address, or a host name and port standing for every
/// address the name resolves to (see [`crate::config::resolve_listen`]).
fn listen_addrs(flag: &str, value: &str) -> Result<Vec<SocketAddr>, String> {
    crate::config::resolve_listen(value).map_err(|why| format!("{flag}: {why}"))
}

fn parse_serve(words: &[String]) -> Result<Command, String> {
    let mut out = ServeArgs::default();
    let mut words = Words::new(words);
    while let Some(arg) = words.next_arg() {
        let (name, inline) = match arg {
            Arg::Flag { name, inline } => (name, inline),
            Arg::Positional(p) => {
                return Err(format!("unexpected argument '{p}' for `worldbridge serve`"))
            }
        };
        match name {
            "--config" => {
                let v = words.value(name, inline, "a TOML file")?;
                set_once(&mut out.config, name, PathBuf::from(v))?;
            }
            "--http" | "--line" => {
                let v = words.value(name, inline, "an address like 127.0.0.1:4004")?;
                let list = if name == "--http" {
                    &mut out.http
                } else {
                    &mut out.line
                };
                for addr in listen_addrs(name, v)? {
                    if !list.contains(&addr) {
                        list.push(addr);
                    }
                }
            }
            "--world" => {
                let v = words.value(name, inline, "a world id")?;
                set_once(&mut out.world, name, v.to_string())?;
            }
            "--data-dir" => {
                let v = words.value(name, inline, "a directory")?;
                set_once(&mut out.data_dir, name, v.to_string())?;
            }
            "--memory" => {
                no_value(name, inline)?;
                out.memory = true;
            }
            "--agent" => {
                let v = words.value(name, inline, "builtin, openai or command")?;
                if !AGENT_BACKENDS.contains(&v) {
                    return Err(format!(
                        "--agent: '{v}' is not an agent backend (one of {})",
                        AGENT_BACKENDS.join(", ")
                    ));
                }
                set_once(&mut out.agent, name, v.to_string())?;
            }
            other => return common_flag(other, "serve"),
        }
    }
    if out.memory && out.data_dir.is_some() {
        return Err("--data-dir and --memory are alternatives: give one of them".into());
    }
    Ok(Command::Serve(out))
}

/// `--config FILE` and `--data-dir DIR`, the flags every command on a world's data takes
/// (export, import, key).
#[derive(Default)]
struct StoreFlags {
    config: Option<PathBuf>,
    data_dir: Option<String>,
}

impl StoreFlags {
    fn take<'a>(
        &mut self,
        name: &str,
        inline: Option<&'a str>,
        words: &mut Words<'a>,
    ) -> Result<(), String> {
        if name == "--config" {
            let v = words.value(name, inline, "a TOML file")?;
            set_once(&mut self.config, name, PathBuf::from(v))
        } else {
            let v = words.value(name, inline, "a directory")?;
            set_once(&mut self.data_dir, name, v.to_string())
        }
    }
}

fn parse_export(words: &[String]) -> Result<Command, String> {
    let (mut store, mut out) = (StoreFlags::default(), None);
    let mut words = Words::new(words);
    while let Some(arg) = words.next_arg() {
        let (name, inline) = match arg {
            Arg::Flag { name, inline } => (name, inline),
            Arg::Positional(p) => {
                return Err(format!(
                    "unexpected argument '{p}' for `worldbridge export` (use --out FILE)"
                ))
            }
        };
        match name {
            "--config" | "--data-dir" => store.take(name, inline, &mut words)?,
            "--out" => {
                let v = words.value(name, inline, "a file")?;
                set_once(&mut out, name, PathBuf::from(v))?;
            }
            other => return common_flag(other, "export"),
        }
    }
    Ok(Command::Export {
        config: store.config,
        data_dir: store.data_dir,
        out,
    })
}

fn parse_key(words: &[String]) -> Result<Command, String> {
    let mut store = StoreFlags::default();
    let mut words = Words::new(words);
    while let Some(arg) = words.next_arg() {
        let (name, inline) = match arg {
            Arg::Flag { name, inline } => (name, inline),
            Arg::Positional(p) => {
                return Err(format!("unexpected argument '{p}' for `worldbridge key`"))
            }
        };
        match name {
            "--config" | "--data-dir" => store.take(name, inline, &mut words)?,
            other => return common_flag(other, "key"),
        }
    }
    Ok(Command::Key {
        config: store.config,
        data_dir: store.data_dir,
    })
}

fn parse_import(words: &[String]) -> Result<Command, String> {
    let (mut store, mut file, mut force) = (StoreFlags::default(), None, false);
    let mut words = Words::new(words);
    while let Some(arg) = words.next_arg() {
        let (name, inline) = match arg {
            Arg::Flag { name, inline } => (name, inline),
            Arg::Positional(p) => {
                if file.is_some() {
                    return Err(format!(
                        "unexpected argument '{p}': `worldbridge import` takes one FILE"
                    ));
                }
                file = Some(PathBuf::from(p));
                continue;
            }
        };
        match name {
            "--config" | "--data-dir" => store.take(name, inline, &mut words)?,
            "--force" => {
                no_value(name, inline)?;
                force = true;
            }
            other => return common_flag(other, "import"),
        }
    }
    let file = file.ok_or("`worldbridge import` needs the FILE to import")?;
    Ok(Command::Import {
        config: store.config,
        file,
        data_dir: store.data_dir,
        force,
    })
}

fn parse_crisis_eval(words: &[String]) -> Result<Command, String> {
    let (mut files, mut rules) = (Vec::new(), None);
    let mut words = Words::new(words);
    while let Some(arg) = words.next_arg() {
        match arg {
            Arg::Positional(p) => files.push(PathBuf::from(p)),
            Arg::Flag {
                name: "--rules",
                inline,
            } => {
                let v = words.value("--rules", inline, "a crisis rule file")?;
                set_once(&mut rules, "--rules", PathBuf::from(v))?;
            }
            Arg::Flag { name, .. } => return common_flag(name, "crisis-eval"),
        }
    }
    Ok(Command::CrisisEval { files, rules })
}

fn parse_crisis_train(words: &[String]) -> Result<Command, String> {
    let (mut files, mut out) = (Vec::new(), None);
    let mut words = Words::new(words);
    while let Some(arg) = words.next_arg() {
        match arg {
            Arg::Positional(p) => files.push(PathBuf::from(p)),
            Arg::Flag {
                name: "--out",
                inline,
            } => {
                let v = words.value("--out", inline, "the model file to write")?;
                set_once(&mut out, "--out", PathBuf::from(v))?;
            }
            Arg::Flag { name, .. } => return common_flag(name, "crisis-train"),
        }
    }
    Ok(Command::CrisisTrain { files, out })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn p(s: &str) -> Result<Command, String> {
        parse(&words(s))
    }

    fn serve(s: &str) -> ServeArgs {
        match p(s) {
            Ok(Command::Serve(args)) => args,
            other => panic!("{s:?} should be serve, got {other:?}"),
        }
    }

    fn err(s: &str) -> String {
        match p(s) {
            Err(e) => e,
            Ok(c) => panic!("{s:?} should fail, got {c:?}"),
        }
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn no_arguments_is_serve_with_nothing_overridden() {
        assert_eq!(parse(&[]), Ok(Command::Serve(ServeArgs::default())));
        assert_eq!(p("serve"), Ok(Command::Serve(ServeArgs::default())));
    }

    #[test]
    fn every_serve_flag_in_both_spellings() {
        let expected = ServeArgs {
            config: Some(PathBuf::from("/etc/wb.toml")),
            http: vec![a("127.0.0.1:4004"), a("[::1]:8765")],
            line: vec![a("127.0.0.1:4005")],
            world: Some("morrowind".into()),
            data_dir: None,
            memory: true,
            agent: Some("openai".into()),
        };
        let spaced = "--config /etc/wb.toml --http 127.0.0.1:4004 --http [::1]:8765 \
                      --line 127.0.0.1:4005 --world morrowind --memory --agent openai";
        let joined = "--config=/etc/wb.toml --http=127.0.0.1:4004 --http=[::1]:8765 \
                      --line=127.0.0.1:4005 --world=morrowind --memory --agent=openai";
        assert_eq!(serve(spaced), expected);
        assert_eq!(serve(joined), expected);
        assert_eq!(
            serve(&format!("serve {spaced}")),
            expected,
            "`serve` is optional"
        );

        let dir = serve("--data-dir /var/lib/wb");
        assert_eq!(dir.data_dir.as_deref(), Some("/var/lib/wb"));
        assert_eq!(serve("--data-dir=/var/lib/wb"), dir);
        assert!(!dir.memory);
    }

    #[test]
    fn http_and_line_are_repeatable_and_keep_order() {
        let args =
            serve("--http 127.0.0.1:1 --line 127.0.0.1:3 --http=127.0.0.1:2 --line 127.0.0.1:4");
        assert_eq!(args.http, vec![a("127.0.0.1:1"), a("127.0.0.1:2")]);
        assert_eq!(args.line, vec![a("127.0.0.1:3"), a("127.0.0.1:4")]);
    }

    #[test]
    fn every_agent_backend_is_accepted() {
        for backend in ["builtin", "openai", "command"] {
            assert_eq!(
                serve(&format!("--agent {backend}")).agent.as_deref(),
                Some(backend)
            );
        }
        assert_eq!(
            err("--agent gpt"),
            "--agent: 'gpt' is not an agent backend (one of builtin, openai, command)"
        );
    }

    #[test]
    fn export_forms() {
        assert_eq!(
            p("export"),
            Ok(Command::Export {
                config: None,
                data_dir: None,
                out: None
            })
        );
        let full = Command::Export {
            config: Some("c.toml".into()),
            data_dir: Some("d".into()),
            out: Some("world.json".into()),
        };
        assert_eq!(
            p("export --config c.toml --data-dir d --out world.json"),
            Ok(full.clone())
        );
        assert_eq!(
            p("export --out=world.json --data-dir=d --config=c.toml"),
            Ok(full)
        );
        assert_contains(
            &err("export world.json"),
            "unexpected argument 'world.json'",
        );
        assert_contains(&err("export --http 127.0.0.1:1"), "unknown flag '--http'");
    }

    #[test]
    fn import_forms() {
        assert_eq!(
            p("import world.json"),
            Ok(Command::Import {
                config: None,
                file: "world.json".into(),
                data_dir: None,
                force: false
            })
        );
        let full = Command::Import {
            config: Some("c.toml".into()),
            file: "world.json".into(),
            data_dir: Some("d".into()),
            force: true,
        };
        assert_eq!(
            p("import world.json --data-dir d --force --config c.toml"),
            Ok(full.clone())
        );
        assert_eq!(
            p("import --force --data-dir=d --config=c.toml world.json"),
            Ok(full)
        );
        assert_contains(&err("import"), "needs the FILE");
        assert_contains(&err("import --data-dir d"), "needs the FILE");
        assert_contains(&err("import a.json b.json"), "unexpected argument 'b.json'");
        assert_eq!(err("import a.json --force=yes"), "--force takes no value");
    }

    #[test]
    fn help_and_version_from_any_command() {
        for s in [
            "--help",
            "-h",
            "serve --help",
            "export -h",
            "import --help",
            "--world x -h",
        ] {
            assert_eq!(p(s), Ok(Command::Help), "{s}");
        }
        for s in ["--version", "-V", "serve -V", "export --version"] {
            assert_eq!(p(s), Ok(Command::Version), "{s}");
        }
    }

    #[test]
    fn crisis_eval_takes_files_and_an_extra_rule_file() {
        assert_eq!(
            p("crisis-eval"),
            Ok(Command::CrisisEval {
                files: vec![],
                rules: None
            })
        );
        assert_eq!(
            p("crisis-eval a.tsv b.tsv --rules=extra.txt"),
            Ok(Command::CrisisEval {
                files: vec![PathBuf::from("a.tsv"), PathBuf::from("b.tsv")],
                rules: Some(PathBuf::from("extra.txt"))
            })
        );
        assert_contains(&err("crisis-eval --rules"), "--rules needs a value");
        assert_contains(&err("crisis-eval --rules a --rules b"), "given twice");
        assert_contains(&err("crisis-eval --out x"), "unknown flag '--out'");
    }

    #[test]
    fn crisis_train_takes_files_and_an_out_file() {
        assert_eq!(
            p("crisis-train"),
            Ok(Command::CrisisTrain {
                files: vec![],
                out: None
            })
        );
        assert_eq!(
            p("crisis-train a.tsv --out=m.tsv"),
            Ok(Command::CrisisTrain {
                files: vec![PathBuf::from("a.tsv")],
                out: Some(PathBuf::from("m.tsv"))
            })
        );
        assert_contains(&err("crisis-train --out"), "--out needs a value");
        assert_contains(&err("crisis-train --rules x"), "unknown flag '--rules'");
    }

    #[test]
    fn unknown_flags_and_commands_are_named() {
        assert_eq!(
            err("--htp 127.0.0.1:1"),
            "unknown flag '--htp' for `worldbridge serve`"
        );
        for s in ["--htp 1", "start", "serve extra", "import"] {
            assert!(
                !err(s).contains("--help"),
                "main adds the one pointer to --help: {s}"
            );
        }
        assert_contains(&err("serve -x"), "unknown flag '-x'");
        assert_contains(&err("--listen=127.0.0.1:1"), "unknown flag '--listen'");
        assert_contains(&err("import a.json --out b"), "unknown flag '--out'");
        assert_contains(&err("start"), "unknown command 'start'");
        assert_contains(&err("serve extra"), "unexpected argument 'extra'");
    }

    #[test]
    fn missing_values_are_named() {
        assert_eq!(
            err("--http"),
            "--http needs a value (an address like 127.0.0.1:4004)"
        );
        assert_contains(&err("--http="), "--http needs a value");
        assert_contains(&err("--world --memory"), "--world needs a value");
        assert_contains(&err("--config"), "--config needs a value");
        assert_contains(&err("--line"), "--line needs a value");
        assert_contains(&err("--data-dir"), "--data-dir needs a value");
        assert_contains(&err("--agent"), "--agent needs a value");
        assert_contains(&err("export --out"), "--out needs a value");
        assert_contains(&err("import f --data-dir"), "--data-dir needs a value");
    }

    #[test]
    fn bad_addresses_are_named() {
        assert_eq!(
            err("--http 1.2.3"),
            "--http: '1.2.3' is not an address like 127.0.0.1:4004 or localhost:4004"
        );
        assert_eq!(
            err("--line=localhost"),
            "--line: 'localhost' is not an address like 127.0.0.1:4004 or localhost:4004"
        );
        assert_contains(&err("--http 127.0.0.1"), "'127.0.0.1' is not an address");
        assert_contains(&err("--http 127.0.0.1:99999"), "'127.0.0.1:99999'");
    }

    #[test]
    fn a_host_name_stands_for_every_address_it_resolves_to() {
        let Ok(Command::Serve(a)) = p("--http localhost:4004 --line=localhost:4005") else {
            panic!("localhost is accepted");
        };
        assert!(!a.http.is_empty() && !a.line.is_empty());
        assert!(a
            .http
            .iter()
            .all(|x| x.ip().is_loopback() && x.port() == 4004));
        assert!(a
            .line
            .iter()
            .all(|x| x.ip().is_loopback() && x.port() == 4005));
        assert_eq!(a.http[0], "127.0.0.1:4004".parse().unwrap(), "IPv4 first");
        // Given twice, or by name and by number: each address once.
        let Ok(Command::Serve(b)) = p("--http localhost:4004 --http 127.0.0.1:4004") else {
            panic!("accepted");
        };
        assert_eq!(b.http, a.http);
    }

    #[test]
    fn conflicting_or_repeated_single_flags_are_refused() {
        assert_eq!(
            err("--data-dir d --memory"),
            "--data-dir and --memory are alternatives: give one of them"
        );
        assert_eq!(err("--world a --world b"), "--world is given twice");
        assert_eq!(err("--memory=yes"), "--memory takes no value");
    }

    #[test]
    fn usage_lists_every_flag_and_variable() {
        for needle in [
            "worldbridge [serve]",
            "worldbridge export",
            "worldbridge import FILE",
            "--config FILE",
            "--http ADDR",
            "--line ADDR",
            "--world ID",
            "--data-dir DIR",
            "--memory",
            "--agent",
            "builtin",
            "openai",
            "command",
            "--out FILE",
            "--force",
            "--help",
            "--version",
            "WORLDBRIDGE_CONFIG",
            "WORLDBRIDGE_WORLD",
            "WORLDBRIDGE_DATA_DIR",
            "WORLDBRIDGE_AGENT",
            "TIMMY_BRIDGE_HOST",
            "TIMMY_BRIDGE_PORT",
            "RUST_LOG",
            "docs/operations.md",
        ] {
            assert_contains(USAGE, needle);
        }
        assert!(
            USAGE.lines().all(|l| l.chars().count() <= 100),
            "help fits a terminal"
        );
    }

    fn assert_contains(haystack: &str, needle: &str) {
        assert!(
            haystack.contains(needle),
            "expected {needle:?} in {haystack:?}"
        );
    }
}
