//! The `p2ner` command line.

#![forbid(unsafe_code)]

mod demo;
mod plugins;
mod remote;
mod run;
mod server;
mod stream;
mod streams;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};

use p2ner_engine::plugins::PluginOptions;

#[derive(Debug, Parser)]
#[command(
    name = "p2ner",
    version,
    about = "Peer-to-peer live video streaming, built for experiments"
)]
struct Cli {
    /// Add a folder to the front of the plugin search path (repeatable).
    #[arg(long = "plugin-dir", value_name = "DIR", global = true)]
    pub plugin_dirs: Vec<PathBuf>,

    /// Plugin manifest to use instead of ./plugins.toml or ~/.config/p2ner/plugins.toml.
    #[arg(
        long = "plugins-toml",
        value_name = "FILE",
        global = true,
        env = "P2NER_PLUGINS_TOML"
    )]
    pub plugins_toml: Option<PathBuf>,

    /// More detail on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List, inspect and check plugin libraries.
    #[command(subcommand)]
    Plugins(plugins::PluginsCommand),
    /// Run a server: the stream catalogue and the entry point of swarms.
    Server(server::ServerArgs),
    /// Browse the streams of one or more servers.
    Streams(streams::StreamsArgs),
    /// Publish a live stream: register it on servers and feed the swarm.
    Publish(Box<stream::PublishArgs>),
    /// Join a stream and play, save or discard it.
    Subscribe(stream::SubscribeArgs),
    /// A server, a publisher and a few subscribers on this machine, with live stats.
    Demo(demo::DemoArgs),
    /// A long-running engine: many streams on one socket, driven by frontends.
    Run(run::RunArgs),
    /// The sessions of a running engine (--engine URL).
    Sessions(run::SessionsArgs),
    /// Ends a session of a running engine (--engine URL).
    Stop(run::StopArgs),
    /// A session's stats line, or the engine's totals (--engine URL).
    Stats(run::StatsArgs),
}

impl Cli {
    fn plugin_options(&self) -> PluginOptions {
        PluginOptions {
            dirs: self.plugin_dirs.clone(),
            manifest: self.plugins_toml.clone(),
        }
    }
}

/// Logs go to stderr so that stdout stays machine-readable.
fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the command line; every error a user can cause is one line on stderr
/// and a non-zero exit.
fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match &cli.command {
        Command::Plugins(cmd) => plugins::run(cmd, &cli.plugin_options()),
        Command::Server(args) => server::run(args),
        Command::Streams(args) => streams::run(args),
        Command::Publish(args) => stream::publish(args, &cli.plugin_options()),
        Command::Subscribe(args) => stream::subscribe(args, &cli.plugin_options()),
        Command::Demo(args) => demo::run(args, &cli.plugin_options()),
        Command::Run(args) => run::run(args, &cli.plugin_options()),
        Command::Sessions(args) => run::sessions(args),
        Command::Stop(args) => run::stop(args),
        Command::Stats(args) => run::stats(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
