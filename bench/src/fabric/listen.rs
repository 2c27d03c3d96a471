//! `kiseki-bench fabric --listen`: a `TcpServer` (TLS 1.3, client certificates required)
//! serving the memory store or a `ChunkService` over an engine, on a multi-threaded tokio
//! runtime (one worker per core), until SIGINT, SIGTERM or its lifetime ends.
//!
//! It prints `listening on ADDR` on stdout once the socket is bound (scripts read the port
//! from it), the fabric's warnings on stderr (`RUST_LOG` overrides the `warn` level), and a
//! closing line with what it served.

use std::io::Write;
use std::sync::Arc;

use kiseki_devices::MemoryDevice;
use kiseki_engine::store_file::{FileStore, FormatPolicy};
use kiseki_engine::{Engine, EngineError};
use kiseki_fabric::constants::TENANT_REFS_MAX_DEFAULT;
use kiseki_fabric::{ChunkService, Handler, TcpServer, TcpServerConfig};
use kiseki_security::TlsContext;
use kiseki_security::authz::Authorizer;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use super::memory::MemoryStore;
use super::{ListenPlan, Store, certs};
use crate::device::{DeviceArgs, Engine as Backend, Plan};
use crate::engine::{BENCH_IDS, EngineArgs, create_file, device_options, format_and_open};

/// Serves until a signal or the plan's lifetime; errors before serving are returned.
pub fn run(plan: &ListenPlan) -> Result<(), String> {
    init_logging();
    let tls = certs::prepare_server(&plan.tls_dir, plan.addr.ip())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kiseki-bench-fabric")
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    match &plan.store {
        Store::Memory { capacity_bytes } => {
            let store = Arc::new(MemoryStore::new(*capacity_bytes));
            runtime.block_on(serve(plan, &tls, Arc::clone(&store)))?;
            let held = store.stats();
            eprintln!(
                "kiseki-bench: memory store: {} chunks, {} bytes, {} references",
                held.chunks, held.held_bytes, held.references
            );
            Ok(())
        }
        Store::Engine(engine_plan) => {
            let engine = start_engine(engine_plan)?;
            let service =
                ChunkService::new(engine.handle(), Authorizer::default(), TENANT_REFS_MAX_DEFAULT);
            let served = runtime.block_on(serve(plan, &tls, Arc::new(service)));
            let stopped = engine.shutdown().map_err(|e| format!("engine shutdown: {e}"));
            served.and(stopped)
        }
    }
}

/// The engine the listener serves from, checked as `kiseki-bench engine` checks its flags.
pub fn engine_plan(job: DeviceArgs) -> Result<Plan, String> {
    crate::engine::plan(&EngineArgs { job, dedup_percentage: 0 })
}

async fn serve<H: Handler>(
    plan: &ListenPlan,
    tls: &TlsContext,
    handler: Arc<H>,
) -> Result<(), String> {
    let listener =
        TcpListener::bind(plan.addr).await.map_err(|e| format!("--listen={}: {e}", plan.addr))?;
    let server = TcpServer::start(listener, tls, TcpServerConfig::default(), handler)
        .map_err(|e| e.to_string())?;
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "listening on {}", server.local_addr());
    let _ = stdout.flush();
    let reason = stop_reason(plan).await?;
    eprintln!("kiseki-bench: {reason}; stopping");
    let stats = server.stats();
    server.shutdown().await;
    eprintln!(
        "kiseki-bench: served {} connections, {} requests; {} handshakes refused, {} oversized \
         and {} malformed frames",
        stats.connections_opened,
        stats.requests,
        stats.handshakes_failed,
        stats.frames_oversized,
        stats.frames_malformed
    );
    Ok(())
}

/// Waits for SIGINT, SIGTERM or the end of the listener's lifetime; says which came.
async fn stop_reason(plan: &ListenPlan) -> Result<&'static str, String> {
    let handler = |kind, name| signal(kind).map_err(|e| format!("{name} handler: {e}"));
    let mut interrupt = handler(SignalKind::interrupt(), "SIGINT")?;
    let mut terminate = handler(SignalKind::terminate(), "SIGTERM")?;
    let lifetime = async {
        match plan.lifetime {
            Some(lifetime) => tokio::time::sleep(lifetime).await,
            None => std::future::pending().await,
        }
    };
    Ok(tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
        () = lifetime => "--runtime and its margin are over",
    })
}

/// Starts one reactor per job, each over its own region of the file (or its own memory
/// device), formatted on first use as `kiseki-bench engine` does.
fn start_engine(plan: &Plan) -> Result<Engine, String> {
    let jobs = plan.args.numjobs as usize;
    let region = plan.size_bytes / jobs as u64;
    let options = device_options(plan);
    let failed = |index: usize| move |reason: String| EngineError::Reactor { index, reason };
    let started = match (plan.args.ioengine, plan.args.filename.clone()) {
        (Backend::IoUring, Some(path)) => {
            create_file(&path, plan.size_bytes)?;
            let store = FileStore {
                path,
                regions: jobs,
                region_bytes: region,
                ids: BENCH_IDS,
                device: options,
            };
            store.start(FormatPolicy::Blank)
        }
        (Backend::Memory, _) => {
            let open = move |index: usize| {
                let device = MemoryDevice::volatile(region, &options)
                    .map_err(|e| failed(index)(e.to_string()))?;
                format_and_open(device, 0, region, true).map_err(failed(index))
            };
            Engine::start(jobs, Arc::new(open))
        }
        (backend, _) => unreachable!("engine::plan admits {backend:?} without a file"),
    };
    started.map_err(|e| format!("starting the engine: {e}"))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
