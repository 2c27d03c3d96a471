//! `kiseki-server status`: is a running node live and ready, and what does it hold. It asks
//! the node's admin address (plain HTTP on a loopback or management address): `/healthz`,
//! `/readyz` (whose lines it prints: the stopping flag, the metadata leader, each shard's
//! device) and `/metrics` (summed: chunks and data bytes of every shard, fabric requests).
//!
//! Exit codes: 0 ready, 1 live but not ready or not reachable, 2 bad usage.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::CliError;
use crate::config::{ADMIN_ADDR_DEFAULT, NodeConfig, Overrides};
use crate::dev::binary_size;

pub(super) const ABOUT: &str = "Show whether a running node is live and ready, and what it holds";

/// How long each of the three requests may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub(super) struct StatusArgs {
    /// The node's admin address (metrics and health). Default: the configuration's
    /// admin_addr with --config, else 127.0.0.1:9090 (a dev node's).
    #[arg(long, value_name = "ADDR")]
    admin_addr: Option<SocketAddr>,
    /// The node's configuration file, to read its admin_addr from (KISEKI_* variables
    /// apply as for `run`).
    #[arg(long, value_name = "FILE", conflicts_with = "admin_addr")]
    config: Option<PathBuf>,
}

/// What /metrics says, summed over shards and operations.
#[derive(Debug, Default, PartialEq)]
struct Totals {
    shards: u64,
    chunks: u64,
    bytes_used: u64,
    bytes_total: u64,
    fabric_requests: u64,
}

pub(super) fn status(args: StatusArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let admin = match (args.admin_addr, &args.config) {
        (Some(addr), _) => addr,
        (None, Some(file)) => {
            let config = NodeConfig::load(Some(file), &Overrides::default())
                .map_err(|e| CliError::Usage(e.to_string()))?;
            config.admin_addr.parse().map_err(|_| {
                CliError::Usage(format!("admin_addr {:?} is not an address", config.admin_addr))
            })?
        }
        (None, None) => ADMIN_ADDR_DEFAULT.parse().expect("the default is an address"),
    };
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(STATUS_TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .new_agent();
    let get = |path: &str| -> Result<(u16, String), CliError> {
        let url = format!("http://{admin}{path}");
        let mut response = agent.get(&url).call().map_err(|error| {
            CliError::Unavailable(format!("no node answers at {admin} ({url}: {error})"))
        })?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|error| CliError::Unavailable(format!("{url}: {error}")))?;
        Ok((status, body))
    };
    let (health, _) = get("/healthz")?;
    let (ready, readiness) = get("/readyz")?;
    let (_, metrics) = get("/metrics")?;
    let totals = totals(&metrics);
    let verdict = match (health, ready) {
        (200, 200) => "live, ready",
        (200, _) => "live, NOT ready",
        _ => "not healthy",
    };
    writeln!(out, "node at {admin}: {verdict}")?;
    for line in readiness.lines() {
        writeln!(out, "  {line}")?;
    }
    let percent = (totals.bytes_used * 100).checked_div(totals.bytes_total).unwrap_or(0);
    writeln!(
        out,
        "  engine: {} shard(s), {} chunk(s), {} of {} data area used ({percent}%)",
        totals.shards,
        totals.chunks,
        binary_size(totals.bytes_used),
        binary_size(totals.bytes_total)
    )?;
    writeln!(out, "  fabric: {} request(s) served", totals.fabric_requests)?;
    if ready == 200 {
        Ok(())
    } else {
        Err(CliError::Unavailable(format!("the node at {admin} is not ready")))
    }
}

/// Sums the gauges and counters `status` shows from an OpenMetrics text.
fn totals(metrics: &str) -> Totals {
    let mut totals = Totals::default();
    for line in metrics.lines().filter(|line| !line.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        // Gauges and counters of whole things: exact as u64 below 2^53.
        let value = value as u64;
        let name = series.split('{').next().unwrap_or(series);
        match name {
            "kiseki_engine_chunks" => {
                totals.shards += 1;
                totals.chunks += value;
            }
            "kiseki_engine_data_bytes_used" => totals.bytes_used += value,
            "kiseki_engine_data_bytes_total" => totals.bytes_total += value,
            "kiseki_fabric_requests_total" => totals.fabric_requests += value,
            _ => {}
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::{Totals, totals};

    #[test]
    fn sums_every_shard_and_operation_and_skips_the_rest() {
        let text = "\
# HELP kiseki_engine_chunks Chunks stored, by shard
kiseki_engine_chunks{shard=\"0\"} 3
kiseki_engine_chunks{shard=\"1\"} 4
kiseki_engine_data_bytes_used{shard=\"0\"} 1048576
kiseki_engine_data_bytes_used{shard=\"1\"} 2097152
kiseki_engine_data_bytes_total{shard=\"0\"} 8388608
kiseki_engine_data_bytes_total{shard=\"1\"} 8388608
kiseki_fabric_requests_total{op=\"put_chunk\",status=\"ok\"} 2
kiseki_fabric_requests_total{op=\"get_chunk\",status=\"not_found\"} 1
kiseki_fabric_request_seconds_count{op=\"put_chunk\"} 2
garbage line
kiseki_engine_chunks{shard=\"2\"} not-a-number
# EOF";
        let want = Totals {
            shards: 2,
            chunks: 7,
            bytes_used: 3 << 20,
            bytes_total: 16 << 20,
            fabric_requests: 3,
        };
        assert_eq!(totals(text), want);
    }
}
