//! The `coi-bridge` command: run the daemon, check a config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};
use coi_bridge::logging::{self, LogFormat};
use coi_bridge::supervisor::Stop;
use coi_bridge::{app, check, commands, config};

/// Exit codes (sysexits.h where one fits).
mod exit {
    pub const FAILURE: u8 = 1;
    /// Bad command line (clap uses the same code).
    pub const USAGE: u8 = 2;
    /// No store (or no key in it) where the config points: the daemon's first start
    /// makes them, a command beside it never does (EX_NOINPUT).
    pub const NO_STORE: u8 = 66;
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
    /// The config file (TOML); every command but `completions`, `man` and `health --url` needs it.
    #[arg(long, short, global = true, env = "COI_BRIDGE_CONFIG")]
    config: Option<PathBuf>,
    /// The account a command works on, by address: the main file's `[account]` (the
    /// default) or one of `[accounts] dir`. `run` runs them all.
    #[arg(long, global = true, env = "COI_BRIDGE_ACCOUNT")]
    account: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon until SIGTERM/SIGINT.
    Run,
    /// Validate the config and log in to every server; one line per item.
    Check,
    /// The bridge's OpenPGP key (the daemon creates it on its first start).
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Print a SecureJoin invite link: Delta Chat users who open it get a verified
    /// chat with the bridge (or join the group).
    Invite {
        /// Invite to this group (created if the bridge has none by that name).
        #[arg(long)]
        group: Option<String>,
        /// Also write the link as a QR-code PNG.
        #[arg(long)]
        qr: Option<PathBuf>,
    },
    /// Join a Delta Chat user's or group's invite link (https://i.delta.chat/#…); the
    /// running daemon completes the exchange.
    Join {
        /// The invite link.
        link: String,
    },
    /// Write the Matrix appservice registration for the homeserver (fresh tokens).
    GenerateRegistration {
        /// The Matrix bridge's id, when several are configured.
        #[arg(long)]
        bridge: Option<String>,
        /// Replace an existing registration file (the homeserver needs the new one).
        #[arg(long)]
        force: bool,
    },
    /// Contacts and their keys.
    Contact {
        #[command(subcommand)]
        action: ContactAction,
    },
    /// List the portals: which COI chat is linked to which Matrix room or Telegram chat.
    Portals,
    /// Who has moved to COI, per portal (as `/coi_status` and `!coi status` say it), or a
    /// one-page HTML report with a chart of both sides over time.
    Migration {
        /// Only this portal: its remote chat id or its COI chat's name.
        portal: Option<String>,
        /// Write the report as HTML to FILE (self-contained: nothing loaded from the network).
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Remove a portal (as `!coi unlink` / `/coi_unlink` do in the chat): nothing is
    /// bridged between that remote chat and its COI chat any more.
    Unlink {
        /// The bridge id (first column of `portals`).
        bridge: String,
        /// The remote chat (second column of `portals`).
        remote_chat: String,
    },
    /// Write a consistent copy of the SQLite store to FILE while the daemon runs
    /// (progress on stderr; the file is private: it holds the bridge's secret key).
    Backup {
        /// The new backup file (never overwritten).
        file: PathBuf,
    },
    /// Copy the SQLite store into an empty PostgreSQL store, with the daemon stopped
    /// (progress on stderr, then each table's row count on both sides; exit 1 if one differs).
    /// Every account in turn, each into the schema the daemon will use, unless --account names one.
    MigrateStore {
        /// The PostgreSQL store's URL (postgres://USER@HOST/DB); made or migrated to this
        /// version's schema first, and it must hold no row.
        #[arg(long)]
        to: String,
    },
    /// What is set apart: rejected mail (by id), unverified chats, dead letters; release
    /// or drop a rejected mail. Pruned by the [retention] caps.
    Quarantine {
        #[command(subcommand)]
        action: Option<QuarantineAction>,
    },
    /// Exit 0 if the running daemon answers on /health (for container health checks).
    Health {
        /// The URL to ask; defaults to /health on the config's [http] listen address.
        #[arg(long)]
        url: Option<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) to stdout, or write one page per command into a folder.
    Man {
        /// Write coi-bridge.1 and coi-bridge-COMMAND.1 here instead.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeyAction {
    /// Print the address and key fingerprint.
    Show,
    /// Print the public key, armored.
    ExportPublic,
    /// Print the bridge as a vCard with its key (Delta Chat can import it).
    Vcard,
    /// List contacts' new keys kept aside by key continuity (mail signed by them is set apart).
    Changes,
    /// Accept a kept-aside key for an address, after checking it with its owner.
    Accept {
        /// The contact's address.
        address: String,
        /// The new key's fingerprint, as `key changes` prints it.
        fingerprint: String,
    },
}

#[derive(Subcommand)]
enum QuarantineAction {
    /// List what is set apart (the default).
    List,
    /// Take a rejected mail through ingest again: the running daemon records and delivers
    /// it if today's keys, members and limits allow (never twice), else sets it apart again.
    Release {
        /// The mail's id (first column of `quarantine`).
        id: i64,
    },
    /// Delete a rejected mail.
    Drop {
        /// The mail's id (first column of `quarantine`).
        id: i64,
    },
}

#[derive(Subcommand)]
enum ContactAction {
    /// Import contacts and their keys from a vCard file.
    Import {
        /// The .vcf file.
        file: PathBuf,
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
        // Commands that need no config.
        match &cli.command {
            Command::Completions { shell } => {
                let mut script = Vec::new();
                clap_complete::generate(*shell, &mut Cli::command(), "coi-bridge", &mut script);
                return print_bytes(&script);
            }
            Command::Man { out_dir: None } => {
                let mut page = Vec::new();
                if let Err(e) = clap_mangen::Man::new(Cli::command()).render(&mut page) {
                    eprintln!("error: rendering the man page: {e}");
                    return exit::FAILURE;
                }
                return print_bytes(&page);
            }
            Command::Man { out_dir: Some(dir) } => {
                return match std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(Cli::command(), dir)) {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("error: writing man pages into {}: {e}", dir.display());
                        exit::FAILURE
                    }
                };
            }
            Command::Health { url: Some(url) } => return health(url).await,
            _ => {}
        }
        let Some(path) = &cli.config else {
            eprintln!("error: --config FILE is required (or env COI_BRIDGE_CONFIG)");
            return exit::USAGE;
        };
        if matches!(cli.command, Command::Run) {
            return run_daemon(path).await;
        }
        // One registration serves every account: without --account the command looks
        // at all of them, not only the main file's.
        if let (Command::GenerateRegistration { bridge, force }, None) = (&cli.command, &cli.account) {
            return match config::load_daemon(path).and_then(config::Daemon::all_accounts) {
                Ok(all) => print_or_fail(commands::generate_registration(&all, bridge.as_deref(), *force)),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    exit::CONFIG
                }
            };
        }
        // Every account's store moves: without --account, all of them, each into its schema.
        if let (Command::MigrateStore { to }, None) = (&cli.command, &cli.account) {
            return match config::load_daemon(path).and_then(config::Daemon::all_accounts) {
                Ok(all) => print_or_fail(commands::migrate_store(&all, to).await),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    exit::CONFIG
                }
            };
        }
        let loaded = match config::load_for(path, cli.account.as_deref()) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: {e:#}");
                return exit::CONFIG;
            }
        };
        // The commands that log in to the mail server need its password; the others
        // (backup, portals, health, key …) work without it.
        if matches!(cli.command, Command::Check)
            && let Err(e) = loaded.password()
        {
            eprintln!("error: {e:#}");
            return exit::CONFIG;
        }
        match cli.command {
            Command::Check => {
                if check::check(&loaded).await {
                    0
                } else {
                    exit::UNAVAILABLE
                }
            }
            Command::Key { action, .. } => {
                let out = match action {
                    KeyAction::Show => commands::key_show(&loaded).await,
                    KeyAction::ExportPublic => commands::key_export_public(&loaded).await,
                    KeyAction::Vcard => commands::key_vcard(&loaded).await,
                    KeyAction::Changes => commands::key_changes(&loaded).await,
                    KeyAction::Accept { address, fingerprint } => {
                        commands::key_accept(&loaded, &address, &fingerprint).await
                    }
                };
                print_or_fail(out)
            }
            Command::Invite { group, qr } => {
                print_or_fail(commands::invite(&loaded, group.as_deref(), qr.as_deref()).await)
            }
            Command::Join { link } => print_or_fail(commands::join(&loaded, &link).await),
            Command::GenerateRegistration { bridge, force } => {
                print_or_fail(commands::generate_registration(std::slice::from_ref(&loaded), bridge.as_deref(), force))
            }
            Command::Contact { action: ContactAction::Import { file }, .. } => {
                print_or_fail(commands::contact_import(&loaded, &file).await)
            }
            Command::Portals => print_or_fail(commands::portals(&loaded).await),
            Command::Migration { portal, html } => {
                print_or_fail(commands::migration(&loaded, portal.as_deref(), html.as_deref()).await)
            }
            Command::Quarantine { action } => print_or_fail(match action {
                None | Some(QuarantineAction::List) => commands::quarantine_list(&loaded).await,
                Some(QuarantineAction::Release { id }) => commands::quarantine_release(&loaded, id).await,
                Some(QuarantineAction::Drop { id }) => commands::quarantine_drop(&loaded, id).await,
            }),
            Command::Unlink { bridge, remote_chat } => {
                print_or_fail(commands::unlink(&loaded, &bridge, &remote_chat).await)
            }
            Command::Backup { file } => {
                let result = tokio::task::spawn_blocking(move || commands::backup(&loaded, &file)).await;
                print_or_fail(result.unwrap_or_else(|e| Err(anyhow::anyhow!("the backup task failed: {e}"))))
            }
            Command::MigrateStore { to } => {
                print_or_fail(commands::migrate_store(std::slice::from_ref(&loaded), &to).await)
            }
            Command::Health { .. } => {
                let addr = coi_bridge::http::local_addr(loaded.config.http.listen);
                health(&format!("http://{addr}/health")).await
            }
            Command::Completions { .. } | Command::Man { .. } | Command::Run => {
                unreachable!("handled before one account's config is read")
            }
        }
    });
    // A forced stop must not wait for tasks that ignore the token.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    ExitCode::from(code)
}

/// `run`: every account of the main file and its `[accounts] dir`.
async fn run_daemon(path: &std::path::Path) -> u8 {
    let daemon = match config::load_daemon(path) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e:#}");
            return exit::CONFIG;
        }
    };
    // The main account logs in to its mail server: it needs its password now.
    if let Some(main) = &daemon.main
        && let Err(e) = main.password()
    {
        eprintln!("error: {e:#}");
        return exit::CONFIG;
    }
    match app::run(daemon).await {
        Ok(Stop::Clean) => 0,
        Ok(Stop::Forced) => exit::FORCED,
        Ok(Stop::Fatal) => exit::FAILURE,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cannot start");
            eprintln!("error: {e:#}");
            exit::FAILURE
        }
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn print_bytes(bytes: &[u8]) -> u8 {
    use std::io::Write as _;
    match std::io::stdout().write_all(bytes).and_then(|()| std::io::stdout().flush()) {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("error: writing to stdout: {e}");
            exit::FAILURE
        }
    }
}

/// GET `url` (plain HTTP on this host); 0 when it answers 200.
async fn health(url: &str) -> u8 {
    match coi_bridge::http::get_status(url, std::time::Duration::from_secs(5)).await {
        Ok(200) => 0,
        Ok(code) => {
            eprintln!("unhealthy: {url} answered {code}");
            exit::UNAVAILABLE
        }
        Err(e) => {
            eprintln!("unhealthy: {url}: {e:#}");
            exit::UNAVAILABLE
        }
    }
}

fn print_or_fail(out: anyhow::Result<String>) -> u8 {
    match out {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.chain().any(|c| c.is::<coi_bridge::store::Uninitialized>()) { exit::NO_STORE } else { exit::FAILURE }
        }
    }
}
