//! `kiseki-server keys`, `tenant shred` and `audit verify|export`: the key manager and the
//! audit log of one node's data dir, run against its metadata store (`DATA/meta/`, a
//! one-member Raft group on `shard-0.redb`) while the node is stopped. The root key is
//! `DATA/meta/root.key` (0600), made by `keys init`.
//!
//! Who may do what: `keys` and `audit verify` are the node operator's (whoever can read
//! the root key file), recorded in the audit log as the local operator. `tenant shred` and
//! `audit export` act with a certificate and key (`--ca --cert --key [--crl]`): the chain
//! is verified against the cluster CA and CRL, the key must be the certificate's, and the
//! caller's roles (the certificate's, plus `tenant-admin` from `--scope-file`) go through
//! the same authorizer and key service as a remote call. So only that tenant's admin can
//! shred it or export its audit log, and the attempt is audited either way.
//!
//! `keyserver` runs the key manager alone: the gRPC key service
//! (`kiseki.keys.v1.KeyService`, [`crate::keys_grpc`]) over mTLS on the node's metadata
//! store, until SIGINT or SIGTERM. While it runs, the commands above cannot open the
//! store; its clients make the same calls over gRPC.

use crate::audit::now_unix_s;
use std::collections::BTreeSet;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use clap::{Args, Subcommand};
use kiseki_consensus::MetadataGroup;
use kiseki_consensus::command::DedupMode;
use kiseki_consensus::keystore::ConsensusKeyStore;
use kiseki_consensus::node::start_single;
use kiseki_security::authz::{Authorizer, Caller, KesPolicies, RoleFiles, Target};
use kiseki_security::keymanager::{
    AuditEntry, AuditKind, AuditLog, AuditOutcome, KeyManager, KeyManagerConfig, KeyRequest,
    KeyService, LocalRootKey, MemoryLocking, ServiceError, SystemClock, create_root_key_file,
    root_key_path, tenant_of_org,
};
use kiseki_security::{OrgId, TenantId, TlsBuilder, TlsPaths};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use super::CliError;
use crate::objects::ensure_tenant;
use crate::reseal;
use crate::s3::S3Credentials;

/// Where a data dir keeps its metadata (and the root key).
const META_DIR: &str = "meta";
/// Organization ids under a retention hold, one per line (`#` starts a comment).
const RETENTION_HOLDS_FILE: &str = "retention-holds";

#[derive(Debug, Args)]
pub(super) struct DataDir {
    /// The node's data dir (the one `kiseki-server dev` uses).
    #[arg(long, value_name = "DIR", default_value = "./kiseki-data")]
    data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub(super) struct Credentials {
    /// The cluster CA certificate(s), PEM.
    #[arg(long, value_name = "FILE")]
    ca: PathBuf,
    /// The caller's certificate, PEM (leaf first).
    #[arg(long, value_name = "FILE")]
    cert: PathBuf,
    /// The caller's private key, PEM, mode 0600.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The CRL in force (a revoked certificate acts on nothing).
    #[arg(long, value_name = "FILE")]
    crl: Option<PathBuf>,
    /// The policy file (seed 004) the node uses; with --scope-file.
    #[arg(long, value_name = "FILE", requires = "scope_file")]
    policy_file: Option<PathBuf>,
    /// The scope file that makes a tenant's certificate its tenant's admin.
    #[arg(long, value_name = "FILE", requires = "policy_file")]
    scope_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(super) struct KeyserverArgs {
    #[command(flatten)]
    data: DataDir,
    /// Where to serve the key service (gRPC over mTLS).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9200")]
    listen: String,
    /// The key server's CA bundle (default: KISEKI_CA_PATH).
    #[arg(long, value_name = "FILE", requires_all = ["cert", "key"])]
    ca: Option<PathBuf>,
    /// The key server's certificate, OU kiseki-keyserver (default: KISEKI_CERT_PATH).
    #[arg(long, value_name = "FILE", requires_all = ["ca", "key"])]
    cert: Option<PathBuf>,
    /// Its private key (default: KISEKI_KEY_PATH).
    #[arg(long, value_name = "FILE", requires_all = ["ca", "cert"])]
    key: Option<PathBuf>,
    /// The CRL, re-read every KISEKI_CRL_RELOAD_SECS (default: KISEKI_CRL_PATH).
    #[arg(long, value_name = "FILE", requires = "ca")]
    crl: Option<PathBuf>,
    /// The KES policy file: identities (SHA-256 of public keys) bound to API-path globs.
    #[arg(long, value_name = "FILE")]
    kes_policy_file: Option<PathBuf>,
    /// The policy file (seed 004); with --scope-file.
    #[arg(long, value_name = "FILE", requires = "scope_file")]
    policy_file: Option<PathBuf>,
    /// The scope file that makes tenants' certificates their tenants' admins.
    #[arg(long, value_name = "FILE", requires = "policy_file")]
    scope_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(super) enum KeysCommand {
    /// Create the root key (DATA/meta/root.key, mode 0600) if there is none, and the
    /// cluster's first master key (epoch 1, random).
    Init(DataDir),
    /// Make a new random master key the current epoch; older epochs still decrypt
    /// until retired.
    Rotate(DataDir),
    /// Remove an old master-key epoch. Refused until the node's background re-seal has
    /// moved every chunk to a later epoch (`keys reseal --status` says when).
    Retire {
        #[command(flatten)]
        data: DataDir,
        #[arg(long, value_name = "N")]
        epoch: u32,
    },
    /// The background re-seal a running node does after a rotation: pause it, resume it,
    /// or show how far it got (also while the node runs).
    Reseal {
        #[command(flatten)]
        data: DataDir,
        /// Stop between batches until --resume.
        #[arg(long, conflicts_with_all = ["resume", "status"])]
        pause: bool,
        /// Go on after --pause.
        #[arg(long, conflicts_with = "status")]
        resume: bool,
        /// Show the pass's state (the default).
        #[arg(long)]
        status: bool,
    },
    /// Show the master-key epochs, the root key's source and the memory protection.
    Status(DataDir),
}

#[derive(Debug, Subcommand)]
pub(super) enum S3CredentialsCommand {
    /// Make an S3 access key for one workload of a tenant and print it with its secret,
    /// shown this once (only its sealed form is kept). The tenant is set up on first use
    /// (cross-tenant dedup). Tenant admin only; the attempt is audited either way.
    Create {
        #[command(flatten)]
        data: DataDir,
        /// The tenant's organization id.
        #[arg(long, value_name = "ORG")]
        tenant_id: String,
        /// The workload the key acts for: 1 to 64 letters, digits, '.', '_' or '-'.
        #[arg(long, value_name = "NAME")]
        workload_id: String,
        #[command(flatten)]
        credentials: Credentials,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum TenantCommand {
    /// Crypto-shred a tenant: destroy its KEKs for good, so none of its objects can be
    /// read again. Tenant admin only; refused while DATA/meta/retention-holds lists the
    /// tenant.
    Shred {
        #[command(flatten)]
        data: DataDir,
        /// The tenant's organization id.
        #[arg(long, value_name = "ORG")]
        tenant: String,
        #[command(flatten)]
        credentials: Credentials,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum AuditCommand {
    /// Check every audit record: MAC, sequence and hash chain. Exits 1 on the first
    /// edited, deleted or reordered record.
    Verify(DataDir),
    /// Print a tenant's audit records (and the system events that concern every tenant)
    /// as JSON lines. Tenant admin only.
    Export {
        #[command(flatten)]
        data: DataDir,
        #[arg(long, value_name = "ORG")]
        tenant: String,
        #[command(flatten)]
        credentials: Credentials,
    },
}

pub(super) fn keys(command: KeysCommand, out: &mut dyn Write) -> Result<(), CliError> {
    match command {
        KeysCommand::Init(data) => {
            let meta = meta_dir(&data.data_dir)?;
            let root_path = root_key_path(&meta);
            if !root_path.exists() {
                create_root_key_file(&root_path).map_err(key_error)?;
                writeln!(out, "root key created: {} (mode 0600)", root_path.display())?;
            }
            with_keys(&data.data_dir, |keys, log| {
                let (epoch, created) = keys.init_cluster().map_err(key_error)?;
                let verb = if created { "created" } else { "already present" };
                record(keys, log, "keys init", AuditOutcome::Succeeded)?;
                writeln!(out, "master key epoch {epoch} {verb}")?;
                Ok(())
            })
        }
        KeysCommand::Rotate(data) => with_keys(&data.data_dir, |keys, log| {
            let result = keys.rotate_master();
            record(keys, log, "keys rotate", outcome(&result))?;
            let epoch = result.map_err(key_error)?;
            let open = keys.master_epochs().map_err(key_error)?;
            writeln!(out, "master key epoch {epoch} is current; epochs that still open: {open:?}")?;
            Ok(())
        }),
        KeysCommand::Retire { data, epoch } => with_keys(&data.data_dir, |keys, log| {
            let meta = meta_dir(&data.data_dir)?;
            let has_chunks = crate::node::holds_chunks(&data.data_dir);
            // The current epoch (or one never made) the key manager refuses by itself.
            let older = epoch < keys.master_epoch().map_err(key_error)?;
            let checked =
                if older { reseal::check_retire(&meta, epoch, has_chunks) } else { Ok(()) };
            if let Err(why) = checked {
                let failed = AuditOutcome::Failed { reason: why.clone() };
                record(keys, log, &format!("keys retire {epoch}"), failed)?;
                return Err(CliError::Keys(format!("epoch {epoch} not retired: {why}")));
            }
            let result = keys.retire_master_epoch(epoch);
            record(keys, log, &format!("keys retire {epoch}"), outcome(&result))?;
            result.map_err(key_error)?;
            writeln!(out, "master key epoch {epoch} retired")?;
            Ok(())
        }),
        KeysCommand::Reseal { data, pause, resume, status: _ } => {
            reseal_command(&data.data_dir, pause, resume, out)
        }
        KeysCommand::Status(data) => with_keys(&data.data_dir, |keys, _| {
            let epochs = keys.master_epochs().map_err(key_error)?;
            let status = keys.status();
            writeln!(out, "root key: {}", status.root_source)?;
            writeln!(out, "master key epochs: {epochs:?} (current {:?})", status.master_epoch)?;
            writeln!(out, "key cache TTL: {} s", status.cache_ttl_secs)?;
            writeln!(out, "process non-dumpable: {}", status.non_dumpable)?;
            writeln!(out, "mlock failures: {}", status.mlock_failures)?;
            Ok(())
        }),
    }
}

/// `keys reseal`: files only, so it works while the node runs (and holds the store).
fn reseal_command(
    data_dir: &Path,
    pause: bool,
    resume: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let meta = meta_dir(data_dir)?;
    let io = |error: std::io::Error| CliError::Usage(format!("{}: {error}", meta.display()));
    if pause || resume {
        reseal::set_paused(&meta, pause).map_err(io)?;
    }
    let state = reseal::load_state(&meta).map_err(|error| CliError::Keys(error.to_string()))?;
    match state {
        Some(state) => writeln!(out, "{state}")?,
        None => writeln!(out, "no re-seal has run (a node starts one after `keys rotate`)")?,
    }
    let paused = reseal::is_paused(&meta);
    writeln!(out, "{}", if paused { "paused (resume with --resume)" } else { "not paused" })?;
    Ok(())
}

pub(super) fn tenant(command: TenantCommand, out: &mut dyn Write) -> Result<(), CliError> {
    let TenantCommand::Shred { data, tenant, credentials } = command;
    let org = parse_org(&tenant)?;
    let caller = verified_caller(&credentials)?;
    let authorizer = authorizer(&credentials)?;
    let holds = retention_holds(&meta_dir(&data.data_dir)?)?;
    with_node(&data.data_dir, |keys, _| {
        let mut service = KeyService::new(keys, authorizer, AuditLog::default(), Box::new(holds));
        let request = KeyRequest::Delete { name: org.as_str().to_owned() };
        match service.call(&caller, request, now_unix_s()) {
            Ok(_) => {
                writeln!(
                    out,
                    "tenant {org} shredded: its keys are destroyed; none of its \
                               objects can be read again"
                )?;
                Ok(())
            }
            Err(ServiceError::AccessDenied) => Err(CliError::Usage(
                "access denied (only the tenant's admin may shred it; the attempt is \
                 audited)"
                    .into(),
            )),
            Err(error) => Err(CliError::Keys(error.to_string())),
        }
    })
}

pub(super) fn s3_credentials(
    command: S3CredentialsCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let S3CredentialsCommand::Create { data, tenant_id, workload_id, credentials } = command;
    let org = parse_org(&tenant_id)?;
    let workload_ok = (1..=64).contains(&workload_id.len())
        && workload_id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !workload_ok {
        return Err(CliError::Usage(format!(
            "--workload-id {workload_id:?}: 1 to 64 letters, digits, '.', '_' or '-'"
        )));
    }
    let caller = verified_caller(&credentials)?;
    let authorizer = authorizer(&credentials)?;
    with_node_group(&data.data_dir, |mut keys, runtime, group| {
        let path = format!("/v1/s3-credentials/create/{workload_id}");
        let decision =
            authorizer.authorize(&caller, &path, &Target::Tenant(org.clone()), now_unix_s());
        let allowed = decision.is_allowed();
        let entry = AuditEntry::from_event(AuditKind::AdminOperation, decision.audit_event());
        let (root, store) = keys.audit_parts();
        AuditLog::default().append(root, store, entry).map_err(key_error)?;
        if !allowed {
            return Err(CliError::Usage(
                "access denied (only the tenant's admin may make its S3 credentials)".into(),
            ));
        }
        let tenant = tenant_of_org(&org);
        let keys = Arc::new(Mutex::new(keys));
        let (access_key, secret) = runtime
            .block_on(async {
                ensure_tenant(group, &keys, tenant, DedupMode::CrossTenant).await?;
                S3Credentials::new(Arc::clone(group), keys).create(tenant, &workload_id).await
            })
            .map_err(|error| CliError::Keys(format!("S3 credentials: {error}")))?;
        writeln!(out, "tenant:      {org}")?;
        writeln!(out, "workload:    {workload_id}")?;
        writeln!(out, "access key:  {access_key}")?;
        writeln!(out, "secret key:  {}", secret.as_str())?;
        writeln!(
            out,
            "(the secret is shown only now; Kiseki keeps it sealed under the tenant's key)"
        )?;
        Ok(())
    })
}

pub(super) fn audit(command: AuditCommand, out: &mut dyn Write) -> Result<(), CliError> {
    match command {
        AuditCommand::Verify(data) => with_keys(&data.data_dir, |keys, _| {
            let head = AuditLog::verify(keys.root(), keys.store())
                .map_err(|error| CliError::Keys(format!("audit log does not verify: {error}")))?;
            writeln!(out, "audit log verified: {} records, head {}", head.records, head.head_hash)?;
            Ok(())
        }),
        AuditCommand::Export { data, tenant, credentials } => {
            let org = parse_org(&tenant)?;
            let caller = verified_caller(&credentials)?;
            let authorizer = authorizer(&credentials)?;
            with_keys(&data.data_dir, |keys, log| {
                let target = Target::Tenant(org.clone());
                let decision =
                    authorizer.authorize(&caller, "/v1/audit/export", &target, now_unix_s());
                let allowed = decision.is_allowed();
                let entry =
                    AuditEntry::from_event(AuditKind::AdminOperation, decision.audit_event());
                let (root, store) = keys.audit_parts();
                log.append(root, store, entry).map_err(key_error)?;
                if !allowed {
                    return Err(CliError::Usage(
                        "access denied (only the tenant's admin may export its audit log)".into(),
                    ));
                }
                let records =
                    AuditLog::export_tenant(keys.root(), keys.store(), tenant_of_org(&org))
                        .map_err(|error| {
                            CliError::Keys(format!("audit log does not verify: {error}"))
                        })?;
                for record in records {
                    let line = serde_json::to_string(&record)
                        .map_err(|error| CliError::Keys(error.to_string()))?;
                    writeln!(out, "{line}")?;
                }
                Ok(())
            })
        }
    }
}

pub(super) fn keyserver(args: KeyserverArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let shutdown = async {
        let Ok(mut terminate) = signal(SignalKind::terminate()) else { return };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    };
    keyserver_until(args, out, shutdown)
}

/// The key server until `shutdown` resolves (a signal, or a test's channel).
fn keyserver_until(
    args: KeyserverArgs,
    out: &mut dyn Write,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CliError> {
    let paths = match (&args.ca, &args.cert, &args.key) {
        (Some(ca), Some(cert), Some(key)) => {
            TlsPaths { ca: ca.clone(), cert: cert.clone(), key: key.clone(), crl: args.crl.clone() }
        }
        _ => TlsPaths::from_env()?,
    };
    let tls = TlsBuilder::new(paths).build()?;
    // A policy file given at start replaces the stored policies; without one, the stored
    // policies (the last edits through the service) apply.
    let kes = match &args.kes_policy_file {
        None => None,
        Some(path) => {
            let bytes = std::fs::read(path)
                .map_err(|error| CliError::Usage(format!("{}: {error}", path.display())))?;
            Some(KesPolicies::parse(&bytes).map_err(|error| CliError::Usage(error.to_string()))?)
        }
    };
    let from_file = kes.is_some();
    let role_files = match (&args.policy_file, &args.scope_file) {
        (Some(policy), Some(scope)) => Some(read_role_files(policy, scope)?),
        _ => None,
    };
    let authorizer = Authorizer::new(role_files.unwrap_or_default(), kes.unwrap_or_default());
    let holds = retention_holds(&meta_dir(&args.data.data_dir)?)?;
    with_node(&args.data.data_dir, |mut keys, runtime| {
        let (epoch, _) = keys.init_cluster().map_err(key_error)?;
        let mut service = KeyService::new(keys, authorizer, AuditLog::default(), Box::new(holds));
        let policies = if from_file {
            service.save_policies().map_err(key_error)?;
            "from --kes-policy-file, stored"
        } else if service.restore_policies().map_err(key_error)? {
            "as stored by the last edits"
        } else {
            "none yet"
        };
        let service = Arc::new(Mutex::new(service));
        runtime.block_on(async {
            let listener = TcpListener::bind(&args.listen).await.map_err(|source| {
                CliError::Usage(format!("--listen {}: cannot listen there: {source}", args.listen))
            })?;
            let _crl_poller = tls.spawn_crl_poller()?;
            writeln!(
                out,
                "key service listening on {} (master key epoch {epoch}; KES policies: {policies})",
                listener.local_addr()?
            )?;
            out.flush()?;
            crate::keys_grpc::serve(listener, tls.clone(), service, shutdown)
                .await
                .map_err(CliError::Runtime)?;
            writeln!(out, "key service stopped")?;
            Ok(())
        })
    })
}

type Keys = KeyManager<ConsensusKeyStore>;

/// Opens the node's store, runs `work` with its key manager and an audit log, and stops
/// the group again whatever `work` returned.
fn with_keys(
    data_dir: &Path,
    work: impl FnOnce(&mut Keys, &mut AuditLog) -> Result<(), CliError>,
) -> Result<(), CliError> {
    with_node(data_dir, |mut keys, _| work(&mut keys, &mut AuditLog::default()))
}

fn with_node(
    data_dir: &Path,
    work: impl FnOnce(Keys, &tokio::runtime::Runtime) -> Result<(), CliError>,
) -> Result<(), CliError> {
    with_node_group(data_dir, |keys, runtime, _| work(keys, runtime))
}

/// As [`with_node`], with the node's metadata group for `work` too.
fn with_node_group(
    data_dir: &Path,
    work: impl FnOnce(Keys, &tokio::runtime::Runtime, &Arc<MetadataGroup>) -> Result<(), CliError>,
) -> Result<(), CliError> {
    let meta = meta_dir(data_dir)?;
    let root_path = root_key_path(&meta);
    let root = LocalRootKey::from_file(&root_path, MemoryLocking::Required).map_err(|error| {
        CliError::Keys(format!("{error} (run `kiseki-server keys init` first)"))
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let group = Arc::new(runtime.block_on(start_group(&meta))?);
    let store = ConsensusKeyStore::new(Arc::clone(&group), runtime.handle().clone());
    let result =
        KeyManager::new(Box::new(root), store, KeyManagerConfig::default(), Arc::new(SystemClock))
            .map_err(key_error)
            .and_then(|keys| work(keys, &runtime, &group));
    let stopped = runtime.block_on(group.shutdown());
    result?;
    stopped.map_err(|error| CliError::Keys(format!("metadata group: {error}")))
}

/// The node's one-member group (`kiseki_consensus::node::start_single`).
async fn start_group(meta: &Path) -> Result<MetadataGroup, CliError> {
    start_single(meta).await.map_err(|error| match error {
        kiseki_consensus::ConsensusError::Storage(why) => CliError::Keys(format!(
            "cannot open the metadata store ({why}); is the node running? These commands run \
             with it stopped"
        )),
        other => CliError::Keys(format!("metadata store in {}: {other}", meta.display())),
    })
}

fn record(
    keys: &mut Keys,
    log: &mut AuditLog,
    action: &str,
    outcome: AuditOutcome,
) -> Result<(), CliError> {
    let entry = AuditEntry::local(now_unix_s(), AuditKind::KeyOperation, action, None, outcome);
    let (root, store) = keys.audit_parts();
    log.append(root, store, entry).map(|_| ()).map_err(key_error)
}

fn outcome<T>(result: &Result<T, kiseki_security::keymanager::KeyManagerError>) -> AuditOutcome {
    match result {
        Ok(_) => AuditOutcome::Succeeded,
        Err(error) => AuditOutcome::Failed { reason: error.to_string() },
    }
}

/// The caller behind `--cert`/`--key`: chain verified against the CA and CRL, key matching.
fn verified_caller(credentials: &Credentials) -> Result<Caller, CliError> {
    let paths = TlsPaths {
        ca: credentials.ca.clone(),
        cert: credentials.cert.clone(),
        key: credentials.key.clone(),
        crl: credentials.crl.clone(),
    };
    let context = TlsBuilder::new(paths).build()?;
    context.verify_local_certificate()?;
    let identity = context.local_identity();
    let name = identity.common_name().unwrap_or("");
    let roles = identity.role().cloned().into_iter();
    Caller::new(name, &identity.kes_identity().to_string(), roles)
        .map_err(|error| CliError::Usage(format!("--cert: {error}")))
}

fn authorizer(credentials: &Credentials) -> Result<Authorizer, CliError> {
    let (Some(policy), Some(scope)) = (&credentials.policy_file, &credentials.scope_file) else {
        return Ok(Authorizer::default());
    };
    Ok(Authorizer::new(read_role_files(policy, scope)?, KesPolicies::default()))
}

fn read_role_files(policy: &Path, scope: &Path) -> Result<RoleFiles, CliError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|error| CliError::Usage(format!("{}: {error}", path.display())))
    };
    RoleFiles::parse(&read(policy)?, &read(scope)?)
        .map_err(|error| CliError::Usage(error.to_string()))
}

pub(crate) fn retention_holds(meta: &Path) -> Result<BTreeSet<TenantId>, CliError> {
    let path = meta.join(RETENTION_HOLDS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(error) => return Err(CliError::Usage(format!("{}: {error}", path.display()))),
    };
    let mut holds = BTreeSet::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        holds.insert(tenant_of_org(&parse_org(line)?));
    }
    Ok(holds)
}

fn meta_dir(data_dir: &Path) -> Result<PathBuf, CliError> {
    use std::os::unix::fs::DirBuilderExt;
    let meta = data_dir.join(META_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&meta)
        .map_err(|error| CliError::Usage(format!("{}: {error}", meta.display())))?;
    Ok(meta)
}

fn parse_org(text: &str) -> Result<OrgId, CliError> {
    OrgId::parse(text).map_err(|error| CliError::Usage(format!("--tenant {text:?}: {error}")))
}

fn key_error(error: kiseki_security::keymanager::KeyManagerError) -> CliError {
    CliError::Keys(error.to_string())
}

#[cfg(test)]
mod tests;
