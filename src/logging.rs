//! Structured logs through `tracing`: `RUST_LOG` filters, `--log-format text|json` picks the shape, stderr carries them.

use tracing_subscriber::EnvFilter;

/// The shape of log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (journald, Loki, ...).
    Json,
}

/// Installs the global subscriber. `RUST_LOG` overrides the default `info`.
pub fn init(format: LogFormat) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // rPGP warns on every Delta Chat message about its padded PKESK packets ("packet
    // header mismatch"); that is Delta Chat's normal output, not a problem to report.
    if let Ok(quiet) = "pgp::packet::packet_sum=error".parse() {
        filter = filter.add_directive(quiet);
    }
    // Colours only for a terminal; journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
