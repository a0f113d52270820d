//! The `coi-bridge` command: run the daemon, check a config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coi_bridge::logging::{self, LogFormat};
use coi_bridge::supervisor::Stop;
use coi_bridge::{app, check, config};

/// Exit codes (sysexits.h where one fits).
mod exit {
    pub const FAILURE: u8 = 1;
    /// `check` could not reach or log in to a server.
    pub const UNAVAILABLE: u8 = 69;
    /// The configuration is invalid.
    pub const CONFIG: u8 = 78;
    /// Stopped by a second signal or after the grace period.
    pub const FORCED: u8 = 130;
}

#[derive(Parser)]
#[command(name = "coi-bridge", version, about = "Bridges chat-over-email (Delta Chat) to Matrix and Telegram")]
struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value = "text", env = "COI_BRIDGE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon until SIGTERM/SIGINT.
    Run {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate the config and log in to every server; one line per item.
    Check {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    coi_bridge::init_crypto();
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let code = runtime.block_on(async {
        let path = match &cli.command {
            Command::Run { config } | Command::Check { config } => config,
        };
        let loaded = match config::load(path) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: {e:#}");
                return exit::CONFIG;
            }
        };
        match cli.command {
            Command::Check { .. } => {
                if check::check(&loaded).await {
                    0
                } else {
                    exit::UNAVAILABLE
                }
            }
            Command::Run { .. } => match app::run(loaded).await {
                Ok(Stop::Clean) => 0,
                Ok(Stop::Forced) => exit::FORCED,
                Ok(Stop::Fatal) => exit::FAILURE,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "cannot start");
                    eprintln!("error: {e:#}");
                    exit::FAILURE
                }
            },
        }
    });
    // A forced stop must not wait for tasks that ignore the token.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    ExitCode::from(code)
}
