//! The `kiseki-server` command line: parsing, dispatch, and how failures are reported.
//!
//! Subcommands: a node from a configuration (`run`, in `cli/run.rs` over [`crate::run`]),
//! the single-node dev mode (`dev`, in `cli/dev.rs` over [`crate::dev`]), a running node's
//! status (`status`), a metadata node (`metadata`, in `cli/metadata.rs`), the cluster's
//! certificate tools (`ca`, `cert`, `identity`, in `cli/pki.rs`), admission
//! (`admission-token`, `admission serve`, `join`, in `cli/admission.rs`), and the admin tools
//! on a stopped node's data dir (`keys`, `tenant`, `audit`, `s3-credentials`, and
//! `keyserver`, in `cli/keys.rs`).
//!
//! Invariants: [`main`] never panics on bad input; every failure is one line on stderr
//! naming what failed, and a non-zero exit code (2 for a usage error, 1 for the rest);
//! nothing secret is printed: private keys go only to files of mode 0600.

mod admission;
pub(crate) use dev::parse_size;
mod dev;
mod keys;
mod metadata;
mod pki;
mod run;
mod status;

pub(crate) use keys::retention_holds;

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kiseki_security::{IdentityError, PkiError};

use crate::admission::AdmissionServiceError;
use crate::dev::DevError;

const ABOUT: &str = "Kiseki's storage node, and the tools that set up its cluster's security";

const LONG_ABOUT: &str = "\
Kiseki's storage node, and the tools that set up its cluster's security.

One node on this machine, with its CA, certificates and a device file made on first start:

  kiseki-server dev [--data-dir ./kiseki-data] [--device-size 2G] [--fabric-addr ADDR]

A node from a configuration (its certificates, its device, its peers; see `kiseki-server run
--help`):

  kiseki-server run --config /etc/kiseki/kiseki.toml

A metadata node (Raft groups over mTLS; see `kiseki-server metadata --help`):

  kiseki-server metadata --node-id 1 --listen 127.0.0.1:7101 --data-dir ./m1 \
      --peer 2=127.0.0.1:7102 --peer 3=127.0.0.1:7103 --init

Every Kiseki connection is mutually authenticated against one cluster CA. Set one up:

  kiseki-server ca init --out /etc/kiseki/ca
  kiseki-server cert issue --ca /etc/kiseki/ca --role server --name node1.example.com \\
      --san node1.example.com --san 10.0.0.1 --out /etc/kiseki/tls
  kiseki-server cert issue --ca /etc/kiseki/ca --role tenant --org acme-corp \\
      --name workload-1 --out ./acme
  kiseki-server cert revoke --ca /etc/kiseki/ca --cert ./acme/workload-1.crt
  kiseki-server identity of ./acme/workload-1.crt

Admit a new node with a single-use token (it gets a certificate-granting certificate,
then its role certificates, without its private keys ever leaving it):

  kiseki-server admission-token create --node node2 --store /etc/kiseki/tokens.json
  kiseki-server admission serve --ca /etc/kiseki/ca --cert /etc/kiseki/tls/node1.crt \
      --key /etc/kiseki/tls/node1.key --store /etc/kiseki/tokens.json --listen 0.0.0.0:7443
  kiseki-server join --server node1:7443 --server-name node1 --ca-cert ca.crt \
      --token-file token --node node2 --role server --out /etc/kiseki/tls

Nodes and clients then read KISEKI_CA_PATH, KISEKI_CERT_PATH, KISEKI_KEY_PATH and
(optionally) KISEKI_CRL_PATH, re-read every 60 s (KISEKI_CRL_RELOAD_SECS), and
KISEKI_SPIFFE_TRUST_DOMAIN when peers present SPIFFE ids.";

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "kiseki-server", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Every subcommand.
#[derive(Debug, Subcommand)]
enum Command {
    #[command(about = run::ABOUT, long_about = run::LONG_ABOUT)]
    Run(run::RunArgs),
    #[command(about = status::ABOUT)]
    Status(status::StatusArgs),
    #[command(about = dev::ABOUT)]
    Dev(dev::DevArgs),
    #[command(about = metadata::ABOUT)]
    Metadata(metadata::MetadataArgs),
    /// Create the cluster CA.
    #[command(subcommand)]
    Ca(pki::CaCommand),
    /// Issue and revoke certificates signed by the cluster CA.
    #[command(subcommand)]
    Cert(pki::CertCommand),
    /// Show the identities a certificate gives its holder.
    #[command(subcommand)]
    Identity(pki::IdentityCommand),
    /// Mint single-use admission tokens for new nodes.
    #[command(subcommand)]
    AdmissionToken(admission::AdmissionTokenCommand),
    /// Run the admission service that turns tokens into certificates.
    #[command(subcommand)]
    Admission(admission::AdmissionCommand),
    /// Join this node to the cluster with an admission token (or renew its certificates
    /// with its certificate-granting certificate): writes its keys and certificates.
    Join(admission::JoinArgs),
    /// The cluster's master keys: init, rotate, retire, status (node stopped).
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Tenant key operations: crypto-shred (tenant admin only).
    #[command(subcommand)]
    Tenant(keys::TenantCommand),
    /// The tamper-evident audit log: verify it, export a tenant's records.
    #[command(subcommand)]
    Audit(keys::AuditCommand),
    /// Run the key manager alone: the gRPC key service over mTLS on this node's store.
    Keyserver(keys::KeyserverArgs),
    /// A tenant's S3 access keys: create one for a workload (tenant admin; node stopped).
    #[command(subcommand)]
    S3Credentials(keys::S3CredentialsCommand),
}

/// What a subcommand can fail with.
#[derive(Debug)]
#[non_exhaustive]
pub enum CliError {
    /// Arguments that parse but do not make sense together.
    Usage(String),
    Pki(PkiError),
    Identity(IdentityError),
    /// Writing the command's output failed.
    Output(io::Error),
    /// Admission: the token store, the service, or joining.
    Admission(AdmissionServiceError),
    /// The async runtime, a signal handler or the listener failed.
    Runtime(io::Error),
    /// The dev node did not start or stop cleanly.
    Dev(DevError),
    /// The metadata node did not start or stop cleanly.
    Metadata(metadata::MetadataError),
    /// The configured node did not start or stop cleanly.
    Run(crate::run::RunError),
    /// The key manager, its store or the audit log refused or failed.
    Keys(String),
    /// A node is not there, not ready, or a capability is not built.
    Unavailable(String),
}

/// Parses `args` (program name first) and runs the command; what it prints goes to `out`,
/// errors and help on bad usage to `err`. Returns the process exit code.
pub fn main(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version arrive here too, with exit code 0.
            let target: &mut dyn Write = if error.use_stderr() { err } else { out };
            let _ = write!(target, "{}", error.render());
            return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
        }
    };
    match run(cli, out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let _ = writeln!(err, "kiseki-server: {error}");
            ExitCode::from(match error {
                CliError::Usage(_) => 2,
                CliError::Dev(error) if error.is_usage() => 2,
                CliError::Metadata(error) if error.is_usage() => 2,
                CliError::Run(error) if error.is_usage() => 2,
                _ => 1,
            })
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<(), CliError> {
    match cli.command {
        Command::Dev(args) => dev::dev(args, out),
        Command::Run(args) => run::run(args, out),
        Command::Status(args) => status::status(args, out),
        Command::Metadata(args) => metadata::metadata(args, out),
        Command::Ca(command) => pki::ca(command, out),
        Command::Cert(command) => pki::cert(command, out),
        Command::Identity(command) => pki::identity(command, out),
        Command::AdmissionToken(command) => admission::admission_token(command, out),
        Command::Admission(command) => admission::admission(command, out),
        Command::Join(args) => admission::join_cluster(args, out),
        Command::Keys(command) => keys::keys(command, out),
        Command::Tenant(command) => keys::tenant(command, out),
        Command::Audit(command) => keys::audit(command, out),
        Command::Keyserver(args) => keys::keyserver(args, out),
        Command::S3Credentials(command) => keys::s3_credentials(command, out),
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(message) => f.write_str(message),
            CliError::Pki(error) => write!(f, "{error}"),
            CliError::Identity(error) => write!(f, "{error}"),
            CliError::Output(error) => write!(f, "cannot write output: {error}"),
            CliError::Admission(error) => write!(f, "{error}"),
            CliError::Runtime(error) => write!(f, "{error}"),
            CliError::Dev(error) => write!(f, "dev: {error}"),
            CliError::Metadata(error) => write!(f, "metadata: {error}"),
            CliError::Run(error) => write!(f, "run: {error}"),
            CliError::Keys(error) => f.write_str(error),
            CliError::Unavailable(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CliError::Usage(_) => None,
            CliError::Pki(error) => Some(error),
            CliError::Identity(error) => Some(error),
            CliError::Output(error) => Some(error),
            CliError::Admission(error) => Some(error),
            CliError::Runtime(error) => Some(error),
            CliError::Dev(error) => Some(error),
            CliError::Metadata(error) => Some(error),
            CliError::Run(error) => Some(error),
            CliError::Keys(_) | CliError::Unavailable(_) => None,
        }
    }
}

impl From<PkiError> for CliError {
    fn from(error: PkiError) -> CliError {
        CliError::Pki(error)
    }
}

impl From<IdentityError> for CliError {
    fn from(error: IdentityError) -> CliError {
        CliError::Identity(error)
    }
}

impl From<AdmissionServiceError> for CliError {
    fn from(error: AdmissionServiceError) -> CliError {
        CliError::Admission(error)
    }
}

impl From<io::Error> for CliError {
    fn from(error: io::Error) -> CliError {
        CliError::Output(error)
    }
}

#[cfg(test)]
mod tests;
