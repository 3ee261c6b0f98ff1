use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use clap::{Args, Parser, Subcommand};
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

use portcullis::metrics;
use portcullis::proxy::Gateway;
use portcullis::runtime::admin::Admin;
use portcullis::runtime::config_metrics;
use portcullis::runtime::connections::Capped;
use portcullis::runtime::dns_refresh::DnsRefresher;
use portcullis::runtime::eviction::Eviction;
use portcullis::runtime::health_check::HealthChecker;
use portcullis::runtime::key_refresh::KeyRefresher;
use portcullis::runtime::lifecycle::{Exit, Lifecycle, Ready, Signals};
use portcullis::runtime::reload::{catch_sighup, Reloader};
use portcullis::runtime::revocations::Revocations;
use portcullis::runtime::sessions::EndedSessions;
use portcullis::runtime::trace_export::TraceExporter;
use portcullis::snapshot::explain::{Credential, QuestionText};
use portcullis::snapshot::Snapshot;
use portcullis::token::{self, TokenSpec};
use portcullis::websocket::registry::Registry;

/// Portcullis: an API security gateway.
///
/// Without a subcommand it takes Pingora-style flags: `portcullis -c FILE [-d] [-u] [-t]`.
#[derive(Parser)]
#[command(name = "portcullis", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    /// Check the config and exit (as `portcullis check`).
    #[arg(short, long)]
    test: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a config.
    Run(RunArgs),
    /// Validate a config and exit: 0 if it is valid, 1 with the file, line and key if not.
    Check {
        #[arg(short = 'c', long = "conf")]
        conf: PathBuf,
        /// Do not look up the upstreams' host names (each stands for an unroutable address):
        /// for checking a config away from the network it will run in.
        #[arg(long)]
        skip_dns: bool,
    },
    /// Translate another gateway's configuration into a Portcullis config, with comments
    /// for what could not be translated.
    Import {
        #[command(subcommand)]
        from: ImportFrom,
    },
    /// Explain what the gateway would do with a request: the route (and near misses), the
    /// token check, the deciding rule, the rate-limit tier and consumer, the upstream headers.
    Explain(ExplainArgs),
    /// Print the JSON Schema of the config file (as in conf/portcullis.schema.json).
    Schema,
    /// Mint a signed token from a private key (development and tests).
    Token(Box<TokenArgs>),
    /// Print the public JWKS of a private key.
    Jwks {
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = "RS256")]
        alg: jsonwebtoken::Algorithm,
        #[arg(long, default_value = "dev-1")]
        kid: String,
    },
}

#[derive(Subcommand)]
enum ImportFrom {
    /// Apache APISIX: a standalone apisix.yaml, an ADC file, an Admin API export, or one
    /// route object (JSON or YAML).
    Apisix {
        /// The APISIX file.
        file: PathBuf,
        /// Write the config here instead of to standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[derive(Args)]
struct RunArgs {
    /// The TOML config file.
    #[arg(short = 'c', long = "conf")]
    conf: Option<PathBuf>,
    /// Run in the background.
    #[arg(short, long)]
    daemon: bool,
    /// Take over the listening sockets of a running instance (zero-downtime upgrade).
    #[arg(short, long)]
    upgrade: bool,
}

#[derive(Args)]
struct ExplainArgs {
    #[arg(short = 'c', long = "conf")]
    conf: PathBuf,
    /// A token to check as the gateway would (keys are fetched as at start).
    #[arg(long, conflicts_with = "claims")]
    token: Option<String>,
    /// A JSON object of claims, checked as a token's would be but for the signature.
    #[arg(long)]
    claims: Option<String>,
    /// The client address the rules and rate limits see. Default: 127.0.0.1.
    #[arg(long)]
    client_ip: Option<String>,
    /// A request header, `Name: value`; repeatable.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Print JSON, as the admin listener's `POST /explain` answers.
    #[arg(long)]
    json: bool,
    /// GET, POST …
    method: String,
    /// `/path?query`, or an absolute URL whose host counts as `Host`.
    url: String,
}

#[derive(Args)]
struct TokenArgs {
    /// PEM private key (or, for HS*, a file holding the shared secret).
    #[arg(long)]
    key: PathBuf,
    #[arg(long, default_value = "RS256")]
    alg: jsonwebtoken::Algorithm,
    #[arg(long, default_value = "dev-1")]
    kid: String,
    /// Leave `kid` out of the header.
    #[arg(long)]
    no_kid: bool,
    #[arg(long, default_value = "at+jwt")]
    typ: String,
    #[arg(long, default_value = "https://dev.portcullis.local")]
    iss: String,
    /// Audience; repeat for several.
    #[arg(long, default_value = "portcullis")]
    aud: Vec<String>,
    #[arg(long)]
    sub: String,
    /// Realm roles, comma-separated (put in `realm_access.roles`).
    #[arg(long, value_delimiter = ',')]
    roles: Vec<String>,
    /// Space-separated scopes.
    #[arg(long)]
    scope: Option<String>,
    #[arg(long)]
    azp: Option<String>,
    /// Lifetime, e.g. `15m`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Leave `exp` out.
    #[arg(long)]
    no_exp: bool,
    /// Back-date `iat` (and so `exp`) by this much, e.g. `2h` for an expired token.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    issued_ago: Duration,
    /// Set `nbf` this far in the future.
    #[arg(long, value_parser = humantime::parse_duration)]
    not_before_in: Option<Duration>,
    /// Extra claim `name=value` (value as JSON if it parses); repeatable.
    #[arg(long)]
    claim: Vec<String>,
    /// Mint this many tokens, one per line, for subjects `SUB-1` to `SUB-N` (load tests).
    #[arg(long)]
    count: Option<u32>,
}

/// The read buffer of a plain client connection (see `run`).
const PLAIN_READ_BUFFER: usize = 4 * 1024;

// glibc's allocator showed as a tenth of the CPU per request; mimalloc's thread-local free
// lists fit a proxy's many short-lived allocations better.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // First of all: a SIGHUP during start-up must not kill the process.
    let hangup = match catch_sighup() {
        Ok(flag) => flag,
        Err(e) => return fail(format!("cannot install the SIGHUP handler: {e}")),
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { conf, skip_dns }) => check(&conf, !skip_dns),
        Some(Command::Import {
            from: ImportFrom::Apisix { file, output },
        }) => import_apisix(&file, output.as_deref()),
        Some(Command::Explain(args)) => explain(args),
        Some(Command::Schema) => {
            print!("{}", portcullis::config::json_schema());
            ExitCode::SUCCESS
        }
        Some(Command::Token(args)) => mint(*args),
        Some(Command::Jwks { key, alg, kid }) => {
            match token::load_key(&key, alg).and_then(|k| token::jwks(&k, alg, &kid)) {
                Ok(jwks) => {
                    println!("{jwks}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e.to_string()),
            }
        }
        Some(Command::Run(args)) => run(args, hangup),
        None => match (&cli.run.conf, cli.test) {
            (Some(conf), true) => check(conf, true),
            (Some(_), false) => run(cli.run, hangup),
            (None, _) => fail("no config: use `portcullis run -c FILE` (see --help)".into()),
        },
    }
}

/// Binds each address once, before Pingora does: its listener threads panic on an address
/// they cannot bind and leave the process up without serving, where a taken port must be one
/// clear line and exit status 1 (and, under systemd, no readiness).
fn bindable(addresses: &[std::net::SocketAddr]) -> Result<(), String> {
    for addr in addresses {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            return Err(match e.kind() {
                std::io::ErrorKind::AddrInUse => format!("{addr}: address already in use"),
                std::io::ErrorKind::PermissionDenied => format!("{addr}: permission denied"),
                _ => format!("{addr}: {e}"),
            });
        }
    }
    Ok(())
}

fn fail(message: String) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn check(conf: &Path, resolve: bool) -> ExitCode {
    let loaded = if resolve {
        Snapshot::load(conf, None)
    } else {
        Snapshot::load_unresolved(conf)
    };
    match loaded {
        Ok(snapshot) => {
            println!("{}: ok ({})", conf.display(), snapshot.summary());
            ExitCode::SUCCESS
        }
        Err(e) => fail(e.to_string()),
    }
}

fn import_apisix(file: &Path, output: Option<&Path>) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return fail(format!("{}: {e}", file.display())),
    };
    let imported = match portcullis::import::apisix::translate(&text) {
        Ok(i) => i,
        Err(e) => return fail(format!("{}: {e}", file.display())),
    };
    let written = match output {
        Some(path) => {
            std::fs::write(path, &imported.toml).map_err(|e| format!("{}: {e}", path.display()))
        }
        None => {
            print!("{}", imported.toml);
            Ok(())
        }
    };
    if let Err(e) = written {
        return fail(e);
    }
    if !imported.untranslated.is_empty() {
        eprintln!(
            "{} item(s) not translated (marked NOT TRANSLATED in the output):",
            imported.untranslated.len()
        );
        for item in &imported.untranslated {
            eprintln!("  - {item}");
        }
    }
    ExitCode::SUCCESS
}

fn explain(a: ExplainArgs) -> ExitCode {
    let claims = match a.claims.as_deref().map(serde_json::from_str).transpose() {
        Ok(c) => c,
        Err(e) => return fail(format!("--claims: not JSON: {e}")),
    };
    let question = QuestionText {
        method: a.method,
        url: a.url,
        headers: a.headers,
        token: a.token,
        claims,
        client_ip: a.client_ip,
    };
    let question = match question.parse() {
        Ok(q) => q,
        Err(e) => return fail(e),
    };
    let snapshot = match Snapshot::load(&a.conf, None) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start a runtime: {e}")),
    };
    let explanation = runtime.block_on(async {
        // Keys as the gateway loads them at start, for a token to be checked.
        if matches!(question.credential, Credential::Token(_) | Credential::None) {
            let loads = snapshot.authenticator.issuers().iter().map(|i| {
                let keys = i.keys.clone();
                async move { keys.refresh_if_due().await }
            });
            let all = futures_util::future::join_all(loads);
            let _ = tokio::time::timeout(Duration::from_secs(10), all).await;
        }
        snapshot.explain(&question).await
    });
    if a.json {
        match serde_json::to_string_pretty(&explanation) {
            Ok(j) => println!("{j}"),
            Err(e) => return fail(e.to_string()),
        }
    } else {
        print!("{}", explanation.to_text());
    }
    ExitCode::SUCCESS
}

fn mint(a: TokenArgs) -> ExitCode {
    let mut spec = TokenSpec {
        alg: a.alg,
        kid: (!a.no_kid).then_some(a.kid),
        typ: a.typ,
        issuer: a.iss,
        audience: a.aud,
        subject: a.sub,
        roles: a.roles,
        scope: a.scope,
        azp: a.azp,
        ttl: (!a.no_exp).then_some(a.ttl),
        issued_ago: a.issued_ago,
        not_before_in: a.not_before_in,
        claims: a.claim,
    };
    let key = match token::load_key(&a.key, a.alg) {
        Ok(k) => k,
        Err(e) => return fail(e.to_string()),
    };
    let subjects: Vec<String> = match a.count {
        None => vec![spec.subject.clone()],
        Some(n) => (1..=n).map(|i| format!("{}-{i}", spec.subject)).collect(),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for subject in subjects {
        spec.subject = subject;
        let written = token::mint(&key, &spec)
            .map_err(|e| e.to_string())
            .and_then(|t| writeln!(out, "{t}").map_err(|e| e.to_string()));
        if let Err(e) = written {
            return fail(e);
        }
    }
    match out.flush() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e.to_string()),
    }
}

fn run(args: RunArgs, hangup: Arc<std::sync::atomic::AtomicBool>) -> ExitCode {
    let Some(path) = args.conf else {
        return fail("run needs -c FILE".into());
    };
    let snapshot = match Snapshot::load(&path, None).and_then(|mut s| {
        s.open_logs(None)?;
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    let settings = snapshot.server.clone();
    // On an upgrade the old process still holds the sockets it hands over.
    if !args.upgrade {
        let mut addresses = settings.listen.clone();
        addresses.extend(&settings.tls_listen);
        addresses.extend(settings.admin_listen);
        if let Err(e) = bindable(&addresses) {
            return fail(e);
        }
    }
    let shared = Arc::new(ArcSwap::from_pointee(snapshot));
    config_metrics::next_generation();
    metrics::config_loaded();
    config_metrics::watch(shared.clone());
    let lifecycle = Arc::new(Lifecycle::default());

    let conf = ServerConf {
        threads: settings.threads,
        work_stealing: settings.work_stealing,
        pid_file: settings.pid_file.clone(),
        upgrade_sock: settings.upgrade_sock.clone(),
        grace_period_seconds: Some(settings.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(settings.grace_period.as_secs().max(1)),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: args.upgrade,
        daemon: args.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let websockets = Arc::new(Registry::default());
    let eviction = Eviction::new(websockets.clone(), shared.clone());
    let revocations = Revocations::new(shared.clone(), eviction.clone());
    let mut gateway = pingora_proxy::HttpProxy::new(
        Gateway::new(shared.clone(), websockets.clone()),
        server.configuration.clone(),
    );
    gateway.handle_init_modules();
    let mut options = pingora_core::apps::HttpServerOptions::default();
    options.h2c = settings.h2c;
    gateway.server_options = Some(options);
    let mut client_listeners = settings.listen.clone();
    client_listeners.extend(&settings.tls_listen);
    let mut proxy = Service::new(
        "portcullis".into(),
        Capped::new(gateway, &client_listeners, shared.clone()),
    );
    for addr in &settings.listen {
        // Pingora reads plain connections through a 64 KiB buffer, held as long as the
        // connection is: an idle WebSocket would carry it for hours. Reads larger than the
        // buffer bypass it, so bodies stream as before; TLS listeners keep Pingora's size,
        // since TLS reads record by record.
        let buffers = L4BufferSettings::default().read(PLAIN_READ_BUFFER);
        let listener = ListenerConfig::tcp(addr.to_string()).l4_buffer(buffers);
        proxy.endpoints().add_listener(listener);
    }
    if let Some(tls) = &settings.tls {
        for addr in &settings.tls_listen {
            match tls.settings() {
                Ok(s) => proxy.add_tls_with_settings(&addr.to_string(), None, s),
                Err(e) => return fail(format!("TLS listener {addr}: {e}")),
            }
        }
    }
    server.add_service(proxy);
    server.add_service(background_service(
        "key refresh",
        KeyRefresher::new(shared.clone()),
    ));
    server.add_service(background_service(
        "health checks",
        HealthChecker::new(shared.clone()),
    ));
    server.add_service(background_service(
        "dns refresh",
        DnsRefresher::new(shared.clone()),
    ));
    server.add_service(background_service(
        "trace export",
        TraceExporter::new(shared.clone()),
    ));
    let mut listeners = client_listeners;
    if let Some(addr) = settings.admin_listen {
        let mut admin = Service::new(
            "admin".into(),
            Admin::new(
                shared.clone(),
                lifecycle.clone(),
                eviction.clone(),
                revocations.clone(),
            ),
        );
        admin.add_tcp(&addr.to_string());
        server.add_service(admin);
        listeners.push(addr);
    }
    server.add_service(background_service(
        "reload",
        Reloader::new(path.clone(), shared.clone(), hangup),
    ));
    server.add_service(background_service("ready", Ready::new(listeners)));
    server.add_service(background_service("websocket evictions", eviction));
    server.add_service(background_service("session revocations", revocations));
    server.add_service(background_service(
        "ended sessions",
        EndedSessions::new(shared.clone(), websockets.clone()),
    ));
    server.add_service(background_service(
        "exit",
        Exit::new(shared.clone(), websockets),
    ));
    log::info!(
        "portcullis {} serving {}",
        env!("CARGO_PKG_VERSION"),
        path.display()
    );
    server.run(pingora_core::server::RunArgs {
        shutdown_signal: Box::new(Signals {
            lifecycle,
            drain_delay: settings.drain_delay,
        }),
    });
    shared.load().flush_logs();
    ExitCode::SUCCESS
}
