//! The `pgveil` binary: command-line parsing and the process edge.

#![forbid(unsafe_code)]

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use pgveil::config::{Config, Storage};

/// Transparent PostgreSQL proxy that encrypts configured customer columns.
#[derive(Parser)]
#[command(name = "pgveil", version, about)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "PGVEIL_CONFIG",
        default_value = "proxy.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve: accept clients and relay them to the upstream PostgreSQL.
    Run,
    /// Validate the configuration and print what was understood.
    Check,
    /// Start a scratch PostgreSQL with a small CRM, pgveil in front of it,
    /// and print two psql commands (through pgveil, and direct).
    Demo {
        /// Verify plaintext through pgveil and ciphertext directly, then exit.
        #[arg(long)]
        check: bool,
    },
    /// Probe the metrics endpoint's /healthz (or /readyz): exit 0 on 200.
    Healthcheck {
        /// Probe /readyz instead of /healthz.
        #[arg(long)]
        ready: bool,
        /// `host:port` of the endpoint (default: `[metrics] address`).
        #[arg(long)]
        address: Option<String>,
    },
    /// Print a fresh random master key (base64) and its check value.
    Keygen,
    /// Print the SQL literal to store or search for a plaintext value.
    Encrypt {
        /// Configured column, `[schema.]table.column`.
        #[arg(long)]
        column: String,
        /// Storage encoding (default: the config's, else bytea).
        #[arg(long, value_enum)]
        storage: Option<StorageArg>,
        /// The plaintext value, in the column type's text form.
        value: String,
    },
    /// Print (or apply) CHECK constraints that make the database reject
    /// anything but ciphertext in configured columns, and the event trigger
    /// that tells pgveil about schema changes made outside it.
    Guard {
        /// Storage encoding for columns whose config names none (default bytea).
        #[arg(long, value_enum)]
        storage: Option<StorageArg>,
        /// Apply them through this connection URL instead of printing.
        #[arg(long, value_name = "DATABASE_URL")]
        apply: Option<String>,
    },
    /// Bring stored values to ciphertext of the active key version, online:
    /// `encrypt` (plaintext of `migrating` columns), `rotate` (older key
    /// versions), `verify` (report what is left; exit 1 if anything).
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// Print the plaintext of a stored value (as psql prints it).
    Decrypt {
        /// Configured column, `[schema.]table.column`.
        #[arg(long)]
        column: String,
        /// Storage encoding (default: the config's, else bytea).
        #[arg(long, value_enum)]
        storage: Option<StorageArg>,
        /// The stored value: `\x...` hex or the prefixed base64 text.
        stored: String,
    },
}

#[derive(Subcommand)]
enum MigrateAction {
    /// Encrypt the plaintext rows of columns marked `migrating = true`.
    Encrypt(MigrateArgs),
    /// Re-encrypt values of older key versions with the active one.
    Rotate(MigrateArgs),
    /// Report values that are not ciphertext of the active version.
    Verify(MigrateArgs),
}

#[derive(clap::Args)]
struct MigrateArgs {
    /// Database URL (libpq style), connecting directly, not through pgveil.
    #[arg(long, env = "PGVEIL_MIGRATE_URL", hide_env_values = true)]
    url: String,
    /// Only this table (`table` or `schema.table`).
    #[arg(long)]
    table: Option<String>,
    /// Rows per batch; each batch is one short UPDATE.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Pause between batches, to leave the database room.
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
    /// Report what would change; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// PEM CA to verify the database's certificate and host name with
    /// (TLS required). Without it the URL's sslmode applies, unverified.
    #[arg(long, value_name = "PEM")]
    ca: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum StorageArg {
    Bytea,
    Text,
}

impl From<StorageArg> for Storage {
    fn from(s: StorageArg) -> Storage {
        match s {
            StorageArg::Bytea => Storage::Bytea,
            StorageArg::Text => Storage::Text,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One process-wide TLS provider, chosen explicitly (pgveil's own TLS
    // objects also name it); an Err only means one was already installed.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let text = format!("{e:#}");
            if text.starts_with("pgveil:") {
                eprintln!("{text}");
            } else {
                eprintln!("pgveil: {text}");
            }
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    if !matches!(cli.command, Command::Run | Command::Demo { .. }) {
        // Commands other than `run` log warnings (a missing key check
        // value, say) to stderr; `run` sets logging up from `[log]`.
        let _ = pgveil::logging::init(&pgveil::config::Log {
            level: "warn".into(),
            format: pgveil::config::LogFormat::Text,
        });
    }
    match cli.command {
        Command::Keygen => commands::keys::keygen(),
        Command::Demo { check } => commands::demo::demo(check),
        Command::Healthcheck { ready, address } => {
            let address = match address {
                Some(a) => a,
                None => {
                    let config = Config::load(&cli.config)?;
                    let metrics = config
                        .metrics
                        .context("no [metrics] section: pass --address host:port")?;
                    let addr = metrics.address.get_ref().clone();
                    // A wildcard bind is probed on loopback.
                    addr.replace("0.0.0.0", "127.0.0.1")
                        .replace("[::]", "[::1]")
                }
            };
            commands::healthcheck::healthcheck(&address, ready)
        }
        Command::Check => {
            let config = Config::load(&cli.config)?;
            print!("{}", config.summary());
            if config.listen.tls.is_some() || config.upstream.tls.is_some() {
                pgveil::tls::TlsSettings::from_config(&config)?;
                println!("tls:      certificate and key files load");
            }
            if config.keys.is_some() {
                let keyring = pgveil::crypto::Keyring::from_config(&config)?;
                println!("master key: loaded, check value {}", keyring.check_value());
            }
            println!("configuration OK");
            Ok(())
        }
        Command::Run => run(&cli.config),
        Command::Migrate { action } => {
            let config = Config::load(&cli.config)?;
            let (mode, args) = match action {
                MigrateAction::Encrypt(a) => (commands::migrate::Mode::Encrypt, a),
                MigrateAction::Rotate(a) => (commands::migrate::Mode::Rotate, a),
                MigrateAction::Verify(a) => (commands::migrate::Mode::Verify, a),
            };
            let opts = commands::migrate::Options {
                url: args.url,
                table: args.table,
                batch_size: args.batch_size.max(1),
                pause: std::time::Duration::from_millis(args.pause_ms),
                dry_run: args.dry_run,
                ca: args.ca,
            };
            if commands::migrate::migrate(&config, mode, &opts)? {
                Ok(())
            } else {
                Err(anyhow::anyhow!("pgveil: migrate: not done (see above)"))
            }
        }
        Command::Encrypt {
            column,
            storage,
            value,
        } => {
            let config = Config::load(&cli.config)?;
            commands::keys::encrypt(&config, &column, storage.map(Into::into), &value)
        }
        Command::Guard { storage, apply } => {
            let config = Config::load(&cli.config)?;
            commands::guard::guard(&config, storage.map(Into::into), apply.as_deref())
        }
        Command::Decrypt {
            column,
            storage,
            stored,
        } => {
            let config = Config::load(&cli.config)?;
            commands::keys::decrypt(&config, &column, storage.map(Into::into), &stored)
        }
    }
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let log_reload = pgveil::logging::init(&config.log).map_err(anyhow::Error::msg)?;
    let path = path.to_path_buf();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let server = pgveil::server::Server::bind(config)
            .await?
            .with_reload(path, Some(log_reload));
        server.run(pgveil::server::shutdown_signal()).await?;
        Ok(())
    })
}
