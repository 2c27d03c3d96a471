//! `kiseki-server admission-token`, `admission serve` and `join`: the command-line shells
//! over [`crate::admission`]. They check that the arguments fit together, run the library
//! (on a tokio runtime of their own for the two network commands), and print what was
//! written where.
//!
//! Invariants: a token is printed once, by `admission-token create`, and nowhere else (not
//! in errors, not in logs); `join` reads it from `--token` or, better (the process list shows
//! arguments), from `--token-file`; keys go only to new files of mode 0600.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand, ValueEnum};
use kiseki_security::admission::{AdmissionError, check_node_name};
use kiseki_security::constants::ADMISSION_TOKEN_TTL_DEFAULT_SECS;
use kiseki_security::{CA_CERT_FILE, CRL_FILE, CertificateAuthority, Role, TlsBuilder, TlsPaths};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use zeroize::Zeroizing;

use super::CliError;
use crate::admission::wire::{IssueRole, Secret};
use crate::admission::{
    AdmissionServer, AdmissionService, AdmissionServiceError, IfMissing, RoleRequest,
    TokenStoreFile, join, renew, role_stem, system_now_unix_secs,
};
use crate::constants::TOKEN_FILE_MAX_BYTES;

#[derive(Debug, Subcommand)]
pub(super) enum AdmissionTokenCommand {
    /// Mint a single-use admission token for one new node and print it, once. Only the
    /// token's SHA-256 is kept in the store; the token admits the node named here, once,
    /// before it expires.
    Create {
        /// The node's name: a lowercase DNS name of at most 64 bytes. It becomes the
        /// common name of every certificate the node gets.
        #[arg(long, value_name = "NAME")]
        node: String,
        /// How long the token is valid, in seconds (at most 604800, a week).
        #[arg(long, value_name = "SECS", default_value_t = ADMISSION_TOKEN_TTL_DEFAULT_SECS)]
        ttl: u64,
        /// The token store the admission service reads (created with mode 0600 if missing).
        #[arg(long, value_name = "FILE")]
        store: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum AdmissionCommand {
    /// Run the admission service until SIGINT or SIGTERM. A node without a certificate may
    /// only redeem a token for a certificate-granting certificate (CGC, OU kiseki-cgc, 30
    /// days); with its CGC, over mutual TLS, it may ask for server or keyserver certificates
    /// for its own name and renew its CGC, nothing else. This is the one listener where a
    /// client certificate is optional: the token authenticates a node that has none yet.
    Serve {
        /// The CA directory (ca.crt, ca.key): signs what the service issues, and is the
        /// trust anchor for CGCs.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// This service's certificate (a server or keyserver certificate of that CA).
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// This service's private key (mode 0600).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The CRL, re-read every 60 s; a revoked CGC is refused at the handshake
        /// [default: <CA DIR>/crl.pem if it exists].
        #[arg(long, value_name = "FILE")]
        crl: Option<PathBuf>,
        /// The token store written by `admission-token create` (must exist).
        #[arg(long, value_name = "FILE")]
        store: PathBuf,
        /// The address to listen on, e.g. 0.0.0.0:7443.
        #[arg(long, value_name = "ADDR")]
        listen: String,
    },
}

/// `join`: admit this node with a token, or renew with its CGC.
#[derive(Debug, Args)]
pub(super) struct JoinArgs {
    /// The admission service, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    server: String,
    /// The name the admission service's certificate carries (DNS name or IP address).
    #[arg(long, value_name = "NAME")]
    server_name: String,
    /// The cluster CA certificate the admission service's certificate must chain to.
    #[arg(long, value_name = "FILE")]
    ca_cert: PathBuf,
    /// The admission token (visible in the process list; prefer --token-file).
    #[arg(long, value_name = "TOKEN", conflicts_with_all = ["token_file", "renew"])]
    token: Option<String>,
    /// A file holding the admission token.
    #[arg(long, value_name = "FILE", conflicts_with = "renew")]
    token_file: Option<PathBuf>,
    /// This node's name, as the token was minted for.
    #[arg(long, value_name = "NAME", conflicts_with = "renew")]
    node: Option<String>,
    /// The certificates to get, one --role each (server, keyserver).
    #[arg(long, value_enum, required = true)]
    role: Vec<JoinRole>,
    /// Extra SANs for the role certificates: only the node's name or the address it
    /// connects from are granted (the node's name is always in).
    #[arg(long, value_name = "DNS_OR_IP", num_args = 1..)]
    san: Vec<String>,
    /// Directory to write cgc.crt, cgc.key and <role>.crt, <role>.key into (created with
    /// mode 0700; existing files are never overwritten, and are checked before the token
    /// is spent).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Renew instead of joining: use the CGC in --cgc DIR to get a new CGC and new role
    /// certificates, written into --out (a new directory; swap it in when done).
    #[arg(long, requires = "cgc")]
    renew: bool,
    /// With --renew: the directory holding the current cgc.crt and cgc.key.
    #[arg(long, value_name = "DIR", requires = "renew")]
    cgc: Option<PathBuf>,
}

/// The certificates `join` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum JoinRole {
    /// A storage node (kiseki-server).
    Server,
    /// The key manager (kiseki-keyserver).
    Keyserver,
}

pub(super) fn admission_token(
    command: AdmissionTokenCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let AdmissionTokenCommand::Create { node, ttl, store } = command;
    let file = TokenStoreFile::new(&store);
    let now_unix_secs = system_now_unix_secs();
    let token = match file.update(IfMissing::Empty, |tokens| tokens.mint(&node, ttl, now_unix_secs))
    {
        Ok(Ok(token)) => token,
        Ok(Err(error @ (AdmissionError::BadNodeName | AdmissionError::BadTtl { .. }))) => {
            return Err(CliError::Usage(error.to_string()));
        }
        Ok(Err(error)) => return Err(AdmissionServiceError::Token(error).into()),
        Err(error) => return Err(error.into()),
    };
    writeln!(out, "admission token for node {node:?}, single use, valid for {ttl} s:")?;
    writeln!(out)?;
    writeln!(out, "  {}", token.expose())?;
    writeln!(out)?;
    writeln!(out, "It is shown only this once ({} keeps its hash). On the node:", store.display())?;
    writeln!(
        out,
        "  kiseki-server join --server HOST:PORT --server-name NAME --ca-cert ca.crt \\"
    )?;
    writeln!(out, "      --token-file FILE --node {node} --role server --out DIR")?;
    Ok(())
}

pub(super) fn admission(command: AdmissionCommand, out: &mut dyn Write) -> Result<(), CliError> {
    let AdmissionCommand::Serve { ca, cert, key, crl, store, listen } = command;
    let crl = crl.or_else(|| Some(ca.join(CRL_FILE)).filter(|path| path.exists()));
    let tls = TlsBuilder::new(TlsPaths { ca: ca.join(CA_CERT_FILE), cert, key, crl }).build()?;
    if !matches!(tls.local_identity().role(), Some(Role::Server | Role::KeyServer)) {
        return Err(CliError::Usage(
            "--cert must be a server or keyserver certificate: nodes check it".to_owned(),
        ));
    }
    let authority = CertificateAuthority::load(&ca)?;
    let service = AdmissionService::new(tls.clone(), authority, TokenStoreFile::new(store))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(async {
        let mut terminate = signal(SignalKind::terminate()).map_err(CliError::Runtime)?;
        let listener = TcpListener::bind(&listen).await.map_err(|source| {
            CliError::Usage(format!("--listen {listen}: cannot listen there: {source}"))
        })?;
        let _crl_poller = tls.spawn_crl_poller()?;
        writeln!(out, "admission service listening on {}", listener.local_addr()?)?;
        out.flush()?;
        let shutdown = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        };
        Arc::new(service).serve(listener, shutdown).await.map_err(CliError::Runtime)?;
        writeln!(out, "admission service stopped")?;
        Ok(())
    })
}

pub(super) fn join_cluster(args: JoinArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let server = AdmissionServer {
        address: args.server,
        server_name: args.server_name,
        ca_cert: args.ca_cert,
    };
    let mut roles = Vec::new();
    for role in &args.role {
        let role = match role {
            JoinRole::Server => IssueRole::Server,
            JoinRole::Keyserver => IssueRole::Keyserver,
        };
        if !roles.contains(&role) {
            roles.push(role);
        }
    }
    let request = RoleRequest { roles, sans: args.san };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let written = match (args.renew, args.cgc) {
        (true, Some(cgc)) => {
            let (cgc_cert, cgc_key) = (cgc.join("cgc.crt"), cgc.join("cgc.key"));
            runtime.block_on(renew(&server, &cgc_cert, &cgc_key, &request, &args.out))?
        }
        (true, None) => return Err(CliError::Usage("--renew needs --cgc DIR".to_owned())),
        (false, _) => {
            let node = args.node.ok_or_else(|| CliError::Usage("join needs --node NAME".into()))?;
            check_node_name(&node).map_err(|error| CliError::Usage(format!("--node: {error}")))?;
            let token = match (args.token, args.token_file) {
                (Some(token), None) => Zeroizing::new(token),
                (None, Some(path)) => read_token(&path)?,
                _ => {
                    return Err(CliError::Usage(
                        "join needs --token TOKEN or --token-file FILE".to_owned(),
                    ));
                }
            };
            let token = Secret::new(Zeroizing::new(token.trim().to_owned()));
            runtime.block_on(join(&server, &token, &node, &request, &args.out))?
        }
    };
    writeln!(
        out,
        "{} into {}:",
        if args.renew { "renewed" } else { "joined" },
        args.out.display()
    )?;
    for path in &written {
        writeln!(out, "  {}", path.display())?;
    }
    if let Some(role) = request.roles.first() {
        let cert = args.out.join(format!("{}.crt", role_stem(*role)));
        writeln!(out, "Point the node at its certificate:")?;
        writeln!(
            out,
            "  KISEKI_CA_PATH={} KISEKI_CERT_PATH={} KISEKI_KEY_PATH={}",
            server.ca_cert.display(),
            cert.display(),
            cert.with_extension("key").display()
        )?;
    }
    Ok(())
}

/// The token in `path`, read into a buffer zeroed on drop.
fn read_token(path: &Path) -> Result<Zeroizing<String>, CliError> {
    let unreadable =
        |source: io::Error| CliError::Usage(format!("--token-file {}: {source}", path.display()));
    let file = fs::File::open(path).map_err(unreadable)?;
    let mut text = Zeroizing::new(String::new());
    file.take(TOKEN_FILE_MAX_BYTES + 1).read_to_string(&mut text).map_err(unreadable)?;
    if text.len() as u64 > TOKEN_FILE_MAX_BYTES {
        return Err(CliError::Usage(format!("--token-file {}: not a token", path.display())));
    }
    Ok(text)
}
