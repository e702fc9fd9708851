//! The `export-host` command line.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;

use export_host::config::Config;
use export_host::server::{Server, plugin_host};
use export_host::shutdown::Shutdown;

#[derive(Parser)]
#[command(
    name = "export-host",
    version,
    about = "Templates + JSON -> documents in sandboxed WebAssembly plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API and the worker (embedded queue unless configured otherwise).
    Serve {
        /// Config file (YAML); built-in defaults when omitted.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Override `server.listen`.
        #[arg(long)]
        listen: Option<String>,
        /// Override `storage.data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Override `plugins.dir`.
        #[arg(long)]
        plugins: Option<PathBuf>,
    },
    /// Render one document offline, through the same sandbox and limits.
    Render {
        #[arg(long)]
        template: PathBuf,
        /// JSON file with the data (an object).
        #[arg(long)]
        data: PathBuf,
        /// Output format, e.g. html, docx, pdf.
        #[arg(long)]
        format: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        plugins: Option<PathBuf>,
    },
    /// Manage plugins.
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
    },
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// List the plugins in the plugin directory and the formats they offer.
    List {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        plugins: Option<PathBuf>,
    },
}

fn load_config(path: Option<&PathBuf>) -> Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,wasmtime=warn,cranelift=warn,rocketmq_client_rust=warn")
    });
    let json = std::env::var("EXPORT_HOST_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
            plugins,
        } => {
            let mut config = load_config(config.as_ref())?;
            if let Some(l) = listen {
                config.server.listen = l;
            }
            if let Some(d) = data_dir {
                config.storage.data_dir = d;
            }
            if let Some(p) = plugins {
                config.plugins.dir = p;
            }
            config.validate()?;
            let shutdown = Shutdown::new();
            shutdown.on_signals();
            let backend = config.backend();
            let server = Server::start(config, shutdown)
                .await
                .context("cannot start the service")?;
            let formats: Vec<String> = server
                .state
                .plugins
                .formats()
                .into_iter()
                .map(|f| f.name)
                .collect();
            tracing::info!(addr = %server.addr, ?backend, ?formats, "export-host serving");
            // One machine-readable line on stdout for scripts and tests.
            println!("export-host listening on http://{}", server.addr);
            std::io::stdout().flush()?;
            server.wait().await?;
            Ok(())
        }
        Command::Render {
            template,
            data,
            format,
            out,
            config,
            plugins,
        } => {
            let mut config = load_config(config.as_ref())?;
            if let Some(p) = plugins {
                config.plugins.dir = p;
            }
            let host = plugin_host(&config)?;
            let Some(info) = host.format(&format) else {
                let available: Vec<String> = host.formats().into_iter().map(|f| f.name).collect();
                bail!(
                    "unknown format {format:?}; available: {}",
                    available.join(", ")
                );
            };
            let name = template
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let kind = template
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            if !info.template_kinds.contains(&kind) {
                bail!(
                    "format {format:?} renders from {} files, not {name:?}",
                    info.template_kinds.join(", ")
                );
            }
            let template_bytes = std::fs::read(&template)
                .with_context(|| format!("reading {}", template.display()))?;
            let data_text = std::fs::read_to_string(&data)
                .with_context(|| format!("reading {}", data.display()))?;
            let value: serde_json::Value = serde_json::from_str(&data_text)
                .with_context(|| format!("{} is not valid JSON", data.display()))?;
            if !value.is_object() {
                bail!("{} must hold a JSON object", data.display());
            }
            let started = std::time::Instant::now();
            let doc = tokio::task::spawn_blocking(move || {
                host.render(&format, &name, template_bytes, data_text, Vec::new())
            })
            .await?
            .map_err(|fault| anyhow::anyhow!("render failed ({}): {fault}", fault.class()))?;
            std::fs::write(&out, &doc.bytes)
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!(
                "wrote {} ({} bytes, {}) in {:.1} ms",
                out.display(),
                doc.bytes.len(),
                doc.media_type,
                started.elapsed().as_secs_f64() * 1000.0
            );
            Ok(())
        }
        Command::Plugins {
            command: PluginsCommand::List { config, plugins },
        } => {
            let mut config = load_config(config.as_ref())?;
            if let Some(p) = plugins {
                config.plugins.dir = p;
            }
            let host = plugin_host(&config)?;
            println!(
                "{:<24} {:<10} {:<10} {:<9} FORMATS / ERROR",
                "FILE", "PLUGIN", "VERSION", "STATUS"
            );
            for s in host.statuses() {
                let detail = s.error.clone().unwrap_or_else(|| s.formats.join(", "));
                println!(
                    "{:<24} {:<10} {:<10} {:<9} {detail}",
                    s.file,
                    s.name.as_deref().unwrap_or("-"),
                    s.version.as_deref().unwrap_or("-"),
                    s.status
                );
            }
            Ok(())
        }
    }
}
