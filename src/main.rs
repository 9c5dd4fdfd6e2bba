//! `worldbridge`: start-up only. Parse the command line, load the config, start logging,
//! bind, and run the loop until SIGINT/SIGTERM.

use std::process::ExitCode;
use worldbridge::cli::{self, Command};
use worldbridge::config::Config;
use worldbridge::event_loop::Bridge;

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
                let mut bridge = Bridge::new(cfg)?;
                bridge.handle_signals()?;
                bridge.run()
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("worldbridge: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Export { .. } | Command::Import { .. } => {
            eprintln!("worldbridge: export and import need the durable store, which this build does not have yet");
            ExitCode::from(2)
        }
    }
}
