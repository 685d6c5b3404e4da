//! `cairn`: the agent and the operator commands.

use std::process::ExitCode;

use cairn_node::config::AgentArgs;
use cairn_node::{agent, cli};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// A registry of a million instances is some ten million small blocks: mimalloc keeps them in
/// size classes without a header each, where glibc's malloc spent about a third more.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for bad usage or configuration (BSD's EX_USAGE), before any port is bound.
const EXIT_USAGE: u8 = 64;

/// `cairn agent ...`: parsed on its own, because its `--http-addr` is a listen address while the
/// operator commands' `--http-addr` is where to connect.
#[derive(Parser)]
#[command(name = "cairn", version)]
struct AgentCli {
    #[command(subcommand)]
    command: AgentCommand,
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Run a Cairn server node.
    Agent(AgentArgs),
}

/// Every other command.
#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Service discovery and DNS registry cluster"
)]
struct OperatorCli {
    #[command(flatten)]
    target: cli::Target,
    #[command(subcommand)]
    command: Operator,
}

#[derive(Subcommand)]
enum Operator {
    /// Run a Cairn server node (`cairn agent --help` lists its flags).
    Agent,
    /// Print the native API's OpenAPI document (what `GET /v1/openapi.json` serves):
    /// `cairn openapi > api/openapi.json` after changing a route or a wire type.
    #[command(hide = true)]
    Openapi,
    #[command(flatten)]
    Command(Box<cli::Command>),
}

/// Prints a parse error (or help) and picks the exit code.
fn parse_failed(e: clap::Error) -> ExitCode {
    let _ = e.print();
    if e.use_stderr() {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("agent") {
        return match AgentCli::try_parse() {
            Ok(AgentCli {
                command: AgentCommand::Agent(args),
            }) => agent_main(args),
            Err(e) => parse_failed(e),
        };
    }
    let parsed = match OperatorCli::try_parse() {
        Ok(p) => p,
        Err(e) => return parse_failed(e),
    };
    let command = match parsed.command {
        Operator::Command(c) => *c,
        Operator::Openapi => {
            print!("{}", cairn_node::http::openapi_json_text());
            return ExitCode::SUCCESS;
        }
        // Only reached with flags before `agent`, e.g. `cairn --json agent`.
        Operator::Agent => {
            eprintln!("cairn: put `agent` first: cairn agent [FLAGS]");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cairn: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(cli::run(parsed.target, command))
}

fn agent_main(args: AgentArgs) -> ExitCode {
    let config = match args.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cairn: invalid configuration: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if args.check {
        println!("cairn: configuration is valid");
        return ExitCode::SUCCESS;
    }
    cairn_node::logs::init(quiet_dependencies(&config.log), config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cairn: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        match agent::run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("cairn: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// openraft logs every election step at info, and while a member is down an error and three
/// warnings twice a second from replication; Cairn reports a member's going down and coming
/// back itself ("member liveness changed"). Unless the filter names openraft, keep it quiet.
fn quiet_dependencies(filter: &str) -> tracing_subscriber::EnvFilter {
    let mut f = filter.to_owned();
    if !filter.contains("openraft") {
        f.push_str(",openraft=warn,openraft::replication=off,openraft::engine::handler::replication_handler=off");
    }
    tracing_subscriber::EnvFilter::try_new(&f)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// SIGTERM or SIGINT starts a clean shutdown; a second one exits at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the agent with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("cairn: second signal; exiting without waiting");
    std::process::exit(1);
}
