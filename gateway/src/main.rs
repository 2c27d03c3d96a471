//! `kiseki-server`: the appliance's one binary. Everything is in [`kiseki_gateway::cli`];
//! this file only sets up logging and turns the outcome into an exit code.

use std::process::ExitCode;

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    kiseki_gateway::cli::main(std::env::args_os(), &mut std::io::stdout(), &mut std::io::stderr())
}
