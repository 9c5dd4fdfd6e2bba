//! `worldbridge`: start-up only. Parse the command line, load the config, start logging,
//! bind, and run the loop until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use worldbridge::cli::{self, Command, ServeArgs};
use worldbridge::config::Config;
use worldbridge::event_loop::Bridge;
use worldbridge::store;

/// mimalloc, not the system allocator: a chat allocates and frees a few dozen small
/// strings and vectors, and glibc's malloc and free were 13 % of the server's time on
/// that path (docs/benchmarks.md, "A new user on every request").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match cli::parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("worldbridge: {e}\n\nRun `worldbridge --help` for usage.");
            return ExitCode::from(2);
        }
    };
    match cmd {
        Command::Help => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("worldbridge {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Serve(args) => {
            let env = |k: &str| std::env::var(k).ok();
            let result = Config::load(&args, &env).and_then(|cfg| {
                // The bridge's errors are typed; here, at the edge, they become the
                // sentence the operator reads.
                let mut bridge = Bridge::new(cfg).map_err(|e| e.to_string())?;
                bridge.handle_signals().map_err(|e| e.to_string())?;
                bridge.run().map_err(|e| e.to_string())
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("worldbridge: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CrisisEval { files, rules } => report(crisis_eval(files, rules)),
        Command::CrisisTrain { files, out } => report(crisis_train(files, out)),
        Command::Key { config, data_dir } => {
            report(store_config(config, data_dir).and_then(|cfg| {
                let path = cfg
                    .key_path()
                    .ok_or("--memory keeps no key: give --data-dir or set federation.key_file")?;
                let (key, created) = worldbridge::federation::sign::WorldKey::load_or_create(&path)
                    .map_err(|e| e.to_string())?;
                if created {
                    eprintln!("worldbridge: created the world key {}", path.display());
                }
                println!("{}", key.public());
                Ok(())
            }))
        }
        Command::Export {
            config,
            data_dir,
            out,
        } => report(store_config(config, data_dir).and_then(|cfg| {
            let doc = match cfg.cluster.is_some() {
                true => export_cluster(cfg)?,
                false => store::export(&data_path(&cfg)).map_err(|e| e.to_string())?,
            };
            let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())? + "\n";
            match out {
                Some(path) => write_file(&path, &text),
                None => {
                    print!("{text}");
                    Ok(())
                }
            }
        })),
        Command::Import {
            config,
            file,
            data_dir,
            force,
        } => report(store_config(config, data_dir).and_then(|cfg| {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            if cfg.cluster.is_some() {
                return import_cluster(&cfg, &text, force);
            }
            let dir = data_path(&cfg);
            let snap = store::import(&dir, &text, force)
                .map_err(|e| e.to_string())?
                .snapshot;
            eprintln!(
                "worldbridge: imported the world {:?} into {} ({} rooms, {} events, {} sessions)",
                snap.world,
                dir.display(),
                snap.rooms.len(),
                snap.events.len(),
                snap.sessions.len()
            );
            Ok(())
        })),
    }
}

/// `worldbridge crisis-eval`: the report goes to stdout; only unreadable or malformed
/// files (or rules) are errors.
fn crisis_eval(files: Vec<PathBuf>, rules: Option<PathBuf>) -> Result<(), String> {
    use worldbridge::agent::crisis::CrisisDetector;
    use worldbridge::agent::crisis_eval;
    let detector = match rules {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            CrisisDetector::with_extra(&path.display().to_string(), &text)?
        }
        None => CrisisDetector::builtin(),
    };
    let files = if files.is_empty() {
        crisis_eval::default_files()?
    } else {
        files
    };
    let cases = crisis_eval::load(&files)?;
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    println!("files: {}", names.join(", "));
    let report = crisis_eval::evaluate(&detector, &cases, 20);
    // A held-out split's misses are never shown: whoever reads them tunes on them.
    let held_out = files
        .iter()
        .any(|f| (f.file_name().and_then(|n| n.to_str())).is_some_and(|n| n.starts_with("test")));
    match held_out {
        true => print!(
            "{}\n(the misses are not listed: a held-out split (test*.tsv) is among the \
             files, and nobody tuning the detector may read its misses)\n",
            report.render_figures()
        ),
        false => print!("{}", report.render()),
    }
    Ok(())
}

/// `worldbridge crisis-train`: trains on the files, writes the model, prints the
/// cross-validated figures.
fn crisis_train(files: Vec<PathBuf>, out: Option<PathBuf>) -> Result<(), String> {
    use worldbridge::agent::{crisis::CrisisDetector, crisis_eval, crisis_train as training};
    let files = if files.is_empty() {
        crisis_eval::default_train_files()?
    } else {
        files
    };
    let (cases, sources) = training::load_training(&files)?;
    let rules = CrisisDetector::rules_only();
    let trained = training::train(&rules, &cases, &sources);
    let out = out.unwrap_or_else(|| PathBuf::from("fixtures/crisis/model.tsv"));
    write_file(&out, &trained.text)?;
    println!("wrote {}", out.display());
    print!(
        "{}",
        training::cross_validated_report(&rules, &cases, &trained)
    );
    Ok(())
}

/// The config `export`/`import` read: the same file, environment and `--data-dir`
/// precedence as `serve`.
fn store_config(config: Option<PathBuf>, data_dir: Option<String>) -> Result<Config, String> {
    let args = ServeArgs {
        config,
        data_dir,
        ..ServeArgs::default()
    };
    let env = |k: &str| std::env::var(k).ok();
    Config::load(&args, &env)
}

/// `worldbridge export` with `[cluster]`: the world as its Redis holds it.
fn export_cluster(cfg: Config) -> Result<store::Export, String> {
    use worldbridge::store::cluster::{dump, ClusterSettings};
    let s = ClusterSettings::from_config(&cfg).ok_or("no [cluster] in the config")?;
    let dump = dump(&s)?;
    let app = worldbridge::app::App::new(cfg).map_err(|e| e.to_string())?;
    Ok(store::Export {
        format: store::EXPORT_FORMAT.into(),
        version: store::EXPORT_VERSION,
        bridge_version: env!("CARGO_PKG_VERSION").into(),
        state: app.exported(dump),
    })
}

/// `worldbridge import` with `[cluster]`: the document's rooms, events and sessions into
/// the world's Redis.
fn import_cluster(cfg: &Config, text: &str, force: bool) -> Result<(), String> {
    use worldbridge::store::cluster::{load, ClusterSettings};
    let s = ClusterSettings::from_config(cfg).ok_or("no [cluster] in the config")?;
    let doc = store::read_export(text).map_err(|e| e.to_string())?;
    if doc.state.snapshot.world != cfg.world {
        return Err(format!(
            "the export is of the world {:?}, this config's is {:?}",
            doc.state.snapshot.world, cfg.world
        ));
    }
    let (records, sessions, fed) = worldbridge::app::cluster::import_records(&doc.state);
    let n = sessions.len();
    let appended = load(&s, records, sessions, fed, force)?;
    eprintln!(
        "worldbridge: imported the world {:?} into {} ({appended} log entries, {n} sessions)",
        cfg.world,
        s.shown_url()
    );
    Ok(())
}

fn data_path(cfg: &Config) -> PathBuf {
    PathBuf::from(worldbridge::config::expand_home(&cfg.store.data_dir))
}

/// Write through a temporary file and rename, so a reader never sees half an export.
fn write_file(path: &std::path::Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn report(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worldbridge: {e}");
            ExitCode::FAILURE
        }
    }
}
