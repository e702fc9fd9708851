//! The `export-host` command line.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;

use export_host::client;
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
        /// Override `server.role`: `api` and `worker` processes can run on
        /// different machines against one RocketMQ cluster.
        #[arg(long, value_enum)]
        role: Option<export_host::config::Role>,
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
        /// A plugin option, `key=value` (repeatable), as `options` of an
        /// export request.
        #[arg(long = "option", value_name = "KEY=VALUE")]
        options: Vec<String>,
    },
    /// Manage plugins.
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
    },
    /// Submit tasks to a running server: one (--data) or a JSON Lines batch
    /// (--batch); with --wait, wait until all are final and download results.
    Submit(SubmitArgs),
    /// Look at tasks and the queue of a running server.
    Tasks {
        #[command(subcommand)]
        command: TasksCommand,
    },
    /// Check config files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// API keys.
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
}

#[derive(Subcommand)]
enum AuthCommand {
    /// Print the `sha256:<hex>` form of a key for `auth.tenants[].keys` or
    /// `auth.admin_keys` (the key is read from stdin when not given, so it
    /// stays out of the shell history).
    HashKey { key: Option<String> },
}

#[derive(clap::Args)]
struct ServerArg {
    /// Base URL of the export-host server.
    #[arg(long, env = "EXPORT_HOST_URL", default_value = client::DEFAULT_SERVER)]
    server: String,
    /// API key, sent as `Authorization: Bearer <key>` (servers with auth.mode: keys).
    #[arg(long, env = "EXPORT_HOST_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

impl ServerArg {
    fn client(&self) -> Result<client::ApiClient> {
        Ok(client::ApiClient::new(
            &self.server,
            self.api_key.as_deref(),
        )?)
    }
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["data", "batch"])))]
struct SubmitArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Template id (for rows that do not name one).
    #[arg(long)]
    template: Option<String>,
    /// Output format, e.g. txt, html, docx, pdf (for rows that do not name one).
    #[arg(long)]
    format: Option<String>,
    /// Priority 0..=9, 9 most urgent (for rows that do not name one).
    #[arg(long)]
    priority: Option<i32>,
    /// One task: a JSON file with the data object.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Many tasks: a JSON Lines file, one data object per line, or per line
    /// {"template_id", "output_format", "priority", "data"} overriding the flags.
    #[arg(long)]
    batch: Option<PathBuf>,
    /// Wait until every task is final, then print the summary; exit 1 if any
    /// task failed, died or was refused.
    #[arg(long)]
    wait: bool,
    /// Download results into this directory as <task id>.<extension>, plus
    /// summary.json (needs --wait).
    #[arg(long, requires = "wait")]
    out: Option<PathBuf>,
    /// Rows per batch request (the server takes at most 1000).
    #[arg(long, default_value_t = client::submit::MAX_BATCH)]
    chunk_size: usize,
    /// Seconds between status polls.
    #[arg(long, default_value_t = 0.5)]
    poll_interval: f64,
    /// Stop waiting after this many seconds; tasks not final count as unfinished.
    #[arg(long)]
    timeout: Option<f64>,
    /// Status and download requests in flight at once.
    #[arg(long, default_value_t = 16)]
    parallel: usize,
    /// No progress output on stderr.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Subcommand)]
enum TasksCommand {
    /// One task's status, pretty-printed.
    Show {
        #[command(flatten)]
        server: ServerArg,
        task_id: String,
        /// Print the server's JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Live queue counts, throughput and latency, refreshed until Ctrl-C.
    Watch {
        #[command(flatten)]
        server: ServerArg,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Print one snapshot and exit (for scripts).
        #[arg(long)]
        once: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config as `serve` would and print the effective settings
    /// (YAML, secrets redacted); exit 1 naming the bad key.
    Check { file: PathBuf },
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
    let result = rt.block_on(run(cli));
    // Renders abandoned at the end of a shutdown grace period must not
    // hold the exit (dropping the runtime would wait for them).
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
            plugins,
            role,
        } => {
            let mut config = load_config(config.as_ref())?;
            if let Some(r) = role {
                config.server.role = r;
            }
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
            let role = server.state.config.server.role;
            tracing::info!(addr = %server.addr, ?backend, ?role, ?formats, "export-host serving");
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
            options,
        } => {
            let mut option_map = std::collections::BTreeMap::new();
            for o in &options {
                let Some((k, v)) = o.split_once('=') else {
                    bail!("--option {o:?}: expected KEY=VALUE");
                };
                option_map.insert(k.to_string(), v.to_string());
            }
            export_host::api::export::validate_options(&option_map)
                .map_err(|e| anyhow::anyhow!("--option: {e}"))?;
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
            // The template's directory is its bundle (assets such as
            // logo.png next to it), as an uploaded template id's files are.
            let input = export_host::plugin::TemplateInput {
                bytes: template_bytes,
                bundle: Some(
                    std::path::absolute(&template)?
                        .parent()
                        .map(|p| p.to_path_buf())
                        .unwrap_or_default(),
                ),
            };
            let option_list: Vec<(String, String)> = option_map.into_iter().collect();
            let started = std::time::Instant::now();
            let doc = tokio::task::spawn_blocking(move || {
                host.render(&format, &name, input, data_text, option_list)
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
        Command::Submit(args) => submit(args).await,
        Command::Tasks {
            command:
                TasksCommand::Show {
                    server,
                    task_id,
                    json,
                },
        } => {
            let api = server.client()?;
            print!("{}", client::tasks::show(&api, &task_id, json).await?);
            Ok(())
        }
        Command::Tasks {
            command:
                TasksCommand::Watch {
                    server,
                    interval,
                    once,
                },
        } => {
            let api = server.client()?;
            client::tasks::watch(&api, seconds("--interval", interval)?, once).await?;
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            print!("{}", export_host::config_check::check(&file)?);
            Ok(())
        }
        Command::Auth {
            command: AuthCommand::HashKey { key },
        } => {
            let key = match key {
                Some(k) => k,
                None => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            if key.is_empty() {
                bail!("the key is empty");
            }
            println!("{}", export_host::auth::hash_key(&key));
            Ok(())
        }
    }
}

fn seconds(flag: &str, value: f64) -> Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{flag} must be a positive number of seconds, not {value}"))
}

async fn submit(args: SubmitArgs) -> Result<()> {
    use client::rows;
    let defaults = rows::Defaults {
        template_id: args.template,
        output_format: args.format,
        priority: args.priority,
    };
    let (rows, single) = match (&args.data, &args.batch) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", path.display()))?;
            let row =
                rows::row(1, value, &defaults).with_context(|| format!("in {}", path.display()))?;
            (vec![row], true)
        }
        (None, Some(path)) => (rows::read_jsonl(path, &defaults)?, false),
        (None, None) => bail!("give --data FILE or --batch FILE"),
    };
    let opts = client::submit::SubmitOptions {
        wait: args.wait,
        out: args.out,
        chunk_size: args.chunk_size,
        poll_interval: seconds("--poll-interval", args.poll_interval)?,
        timeout: args.timeout.map(|t| seconds("--timeout", t)).transpose()?,
        parallel: args.parallel,
        progress: if args.quiet {
            client::progress::Mode::Quiet
        } else {
            client::progress::Mode::Auto
        },
        single,
    };
    let api = args.server.client()?;
    let summary = client::submit::run(&api, &rows, &opts).await?;
    if opts.wait {
        if let Some(dir) = &opts.out {
            summary
                .write_json(dir)
                .with_context(|| format!("writing the summary into {}", dir.display()))?;
        }
        print!("{}", summary.table());
    } else {
        // Scripts read the ids of the queued tasks, one per line, in input order.
        for t in &summary.tasks {
            if let Some(id) = &t.task_id {
                println!("{id}");
            }
        }
        if !summary.all_ok() {
            eprint!("{}", summary.table());
        }
    }
    std::io::stdout().flush()?;
    if !summary.all_ok() {
        bail!(
            "{} of {} tasks did not succeed",
            summary.not_ok(),
            summary.tasks.len()
        );
    }
    Ok(())
}
