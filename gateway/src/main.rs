//! `kiseki-server`: the appliance's one binary. Everything is in [`kiseki_gateway::cli`];
//! this file only sets up logging and turns the outcome into an exit code.

use std::process::ExitCode;

/// mimalloc, not glibc's malloc: on 64 KiB S3 PUTs glibc's malloc and free (with their
/// arena locks and consolidation) were 9% of the server's CPU in a profile, and every
/// request allocates bodies, envelopes and frames of up to 4 MiB; mimalloc keeps per-thread
/// free lists and reuses freed segments instead of mapping and faulting them in again.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,kiseki::metadata=info"));
    // Colours only on a terminal: logs piped to a file or journald stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    kiseki_gateway::cli::main(std::env::args_os(), &mut std::io::stdout(), &mut std::io::stderr())
}
