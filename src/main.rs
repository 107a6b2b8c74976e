//! The `switchboard` command line (SPEC §2).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard::config::{self, LogFormat};
use switchboard::demo;
use switchboard::simulator::{Dialect, Scenario, Simulator};

/// mimalloc instead of glibc malloc: allocation and free were 13 % of CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc commits its arenas eagerly by default, which doubled idle RSS (22 MiB against
/// 12 MiB). It reads its options from the environment once, before `main`, so the process
/// starts itself again with the option set (same PID: `exec`). Set the variable yourself
/// to choose otherwise. `exec` resets signal handlers, so `server::run` installs its own
/// only in the final process.
fn tune_allocator() {
    use std::os::unix::process::CommandExt;
    const VAR: &str = "MIMALLOC_ARENA_EAGER_COMMIT";
    if std::env::var_os(VAR).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(VAR, "0")
        .exec();
    // Only reached when exec failed: run on with the default.
    eprintln!("switchboard: could not restart with {VAR}=0 ({err}); continuing");
}

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Sidecar proxy for telephony and voice-AI APIs"
)]
struct Cli {
    /// Config file to run with.
    #[arg(long, default_value = "config/switchboard.yaml")]
    config: PathBuf,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load and validate a config file, print every problem, exit 0/1. Opens no listeners.
    CheckConfig {
        /// The file (default: --config).
        file: Option<PathBuf>,
    },
    /// Run the bundled vendor simulator.
    Simulate {
        /// Vendor profile whose dialect to speak (`generic` for none).
        #[arg(long)]
        vendor: String,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:18080")]
        listen: String,
        /// Scenario file (YAML).
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Folder of vendor profiles.
        #[arg(long, default_value = "config/profiles")]
        profiles: PathBuf,
        /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// Private key (PEM) for --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Print the canonical envelope for one captured vendor response (no network).
    Normalize {
        /// Vendor profile (`generic` for the detector alone).
        #[arg(long)]
        vendor: String,
        /// The vendor's HTTP status; without it, FILE is a whole captured response
        /// (status line, headers, blank line, body: the golden fixture format).
        #[arg(long)]
        status: Option<u16>,
        /// A vendor response header, `Name: value` (repeatable).
        #[arg(long = "header", value_name = "K: V")]
        headers: Vec<String>,
        /// Request path (for path-scoped profile rules).
        #[arg(long, default_value = "/")]
        path: String,
        /// Folder of vendor profiles.
        #[arg(long, default_value = "config/profiles")]
        profiles: PathBuf,
        /// The body file (or capture, see --status), `-` for stdin; default: empty body.
        file: Option<PathBuf>,
    },
    /// Simulator + Switchboard in front of it on 127.0.0.1, with curl lines to try.
    Demo,
}

/// Logging to stderr. Pingora's own records are capped at `info` whatever the filter says:
/// at `debug` and `trace` they print raw request headers and URIs (API keys, query strings,
/// phone numbers), which must never reach a log (SPEC §8). The cap is added to the one
/// global filter as directives, only when the filter enables more than `info` anywhere:
/// a per-layer or dynamic filter would be asked about every Pingora record on every
/// request (the `log` bridge then forwards them all), which costs more than the proxying.
fn init_logging(format: LogFormat, level: &str) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let verbose = filter
        .max_level_hint()
        .is_none_or(|l| l > tracing::level_filters::LevelFilter::INFO);
    if verbose {
        for target in PINGORA_TARGETS {
            if let Ok(d) = format!("{target}=info").parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    switchboard::access::init(format);
    // Colour only on a terminal: a log collector would store the escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Every crate of Pingora's that logs (a directive's target matches by prefix, and a more
/// specific one wins: each crate is named so that a user's `pingora_core=trace` is capped too).
const PINGORA_TARGETS: [&str; 8] = [
    "pingora",
    "pingora_core",
    "pingora_pool",
    "pingora_http",
    "pingora_error",
    "pingora_runtime",
    "pingora_timeout",
    "pingora_rustls",
];

fn load(file: &std::path::Path) -> Result<config::Config, ExitCode> {
    config::load(file).map_err(|e| {
        eprint!("{e}");
        ExitCode::from(1)
    })
}

fn run(file: &std::path::Path) -> ExitCode {
    let cfg = match load(file) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logging(cfg.log.format, &cfg.log.level);
    let ran = switchboard::server::run(&cfg);
    switchboard::access::flush();
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    match cli.cmd {
        None => run(&cli.config),
        Some(Cmd::CheckConfig { file }) => {
            let file = file.unwrap_or(cli.config);
            match load(&file) {
                Ok(cfg) => {
                    println!("{}: ok ({} vendors)", file.display(), cfg.vendors.len());
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        Some(Cmd::Simulate {
            vendor,
            listen,
            scenario,
            profiles,
            tls_cert,
            tls_key,
        }) => {
            init_logging(LogFormat::Text, "info");
            let scenario = match scenario.as_deref().map(Scenario::load).transpose() {
                Ok(s) => s.unwrap_or_default(),
                Err(e) => {
                    eprintln!("switchboard simulate: {e}");
                    return ExitCode::from(1);
                }
            };
            let dialect = match Dialect::load(&profiles, &vendor) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("switchboard simulate: {e}");
                    return ExitCode::from(1);
                }
            };
            let addr = match listen.parse() {
                Ok(a) => a,
                Err(_) => {
                    eprintln!(
                        "switchboard simulate: invalid --listen {listen:?} (expected ip:port)"
                    );
                    return ExitCode::from(1);
                }
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("switchboard simulate: {e}");
                    return ExitCode::from(1);
                }
            };
            rt.block_on(async {
                let tls = tls_cert.as_deref().zip(tls_key.as_deref());
                let scheme = if tls.is_some() { "https" } else { "http" };
                match Simulator::start_tls(addr, scenario, dialect, false, tls).await {
                    Ok(sim) => {
                        println!(
                            "simulator for {vendor} listening on {scheme}://{}",
                            sim.addr()
                        );
                        let _ = tokio::signal::ctrl_c().await;
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("switchboard simulate: cannot listen on {addr}: {e}");
                        ExitCode::from(1)
                    }
                }
            })
        }
        Some(Cmd::Normalize {
            vendor,
            status,
            headers,
            path,
            profiles,
            file,
        }) => match switchboard::cli::normalize(
            &vendor,
            status,
            &headers,
            &path,
            &profiles,
            file.as_deref(),
        ) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("switchboard normalize: {e}");
                ExitCode::from(1)
            }
        },
        Some(Cmd::Demo) => {
            let cfg = match load(&demo::shipped("config/demo.yaml")) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(cfg.log.format, &cfg.log.level);
            let scenario = match Scenario::load(&demo::shipped("config/demo-scenario.yaml")) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("switchboard demo: {e}");
                    return ExitCode::from(1);
                }
            };
            if let Err(e) = demo::start_simulator(&cfg, scenario) {
                eprintln!("switchboard demo: {e}");
                return ExitCode::from(1);
            }
            println!("{}", demo::banner(&cfg));
            let ran = switchboard::server::run(&cfg);
            switchboard::access::flush();
            match ran {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchboard demo: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
