//! The key manager's gRPC service (`kiseki.keys.v1.KeyService`) over mTLS: tonic served
//! through our own rustls acceptor ([`TlsContext::server_config`]), so the cluster CA and
//! the CRL in force (reloaded without a restart) decide who connects at all.
//!
//! Each call's caller comes from the verified client certificate: its common name, its
//! KES identity (SHA-256 of its public key) and its role; never from a request field or
//! header. The call then goes to [`KeyService::call`], which authorizes it as its API path,
//! audits it and runs it. The [`KeyService`] is synchronous (its store may block on the
//! consensus group), so each call runs on a blocking thread.
//!
//! Bounds: the handshakes and the drain of every gRPC listener (`crate::grpc_tls`); tonic
//! bounds each call's message size (4 MiB by default).

use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use kiseki_proto::keys::key_service_client::KeyServiceClient;
use kiseki_proto::keys::key_service_server::{KeyService as KeyServiceApi, KeyServiceServer};
use kiseki_proto::keys::{
    AssignIdentityRequest, CreateKeyRequest, DataKeyReply, DecryptReply, DecryptRequest, Empty,
    EpochReply, FetchMasterKeyRequest, Identity, IdentityReply, ImportKeyRequest, KeyName,
    ListKeysRequest, MasterKeyReply, NamesReply, PolicyName, PolicyReply, StatusReply,
    WritePolicyRequest,
};
use kiseki_security::authz::Caller;
use kiseki_security::constants::KEY_LEN;
use kiseki_security::keymanager::{
    FetchedMasterKeys, KeyManagerError, KeyReply, KeyRequest, KeyService, KeyStoreBackend,
    ServiceError,
};
use kiseki_security::{TlsContext, TlsPaths};
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity as TlsIdentity};
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use crate::audit::RateLimited;
use crate::grpc_tls::{OnHandshake, accept_tls, caller_of_request, serve_until_stopped};

/// Failed handshakes recorded in the audit log per second, and in a burst; the rest are
/// counted into the next recorded one.
const HANDSHAKE_FAILURES_AUDITED_PER_S: u32 = 10;
const HANDSHAKE_FAILURES_AUDITED_BURST: u32 = 100;

/// The tonic service: a [`KeyService`] behind a lock, and the TLS context that turns a
/// peer's certificates into its identity.
pub struct GrpcKeyService<S> {
    inner: Arc<Mutex<KeyService<S>>>,
    tls: TlsContext,
}

impl<S> std::fmt::Debug for GrpcKeyService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcKeyService").finish_non_exhaustive()
    }
}

impl<S: KeyStoreBackend + Send + 'static> GrpcKeyService<S> {
    pub fn new(service: Arc<Mutex<KeyService<S>>>, tls: TlsContext) -> GrpcKeyService<S> {
        GrpcKeyService { inner: service, tls }
    }

    /// The caller behind a request: its verified certificate chain's identity.
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        caller_of_request(&self.tls, request)
    }

    async fn call<T>(
        &self,
        request: Request<T>,
        make: impl FnOnce(T) -> KeyRequest,
    ) -> Result<KeyReply, Status> {
        let caller = self.caller(&request)?;
        let key_request = make(request.into_inner());
        let inner = Arc::clone(&self.inner);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let outcome = tokio::task::spawn_blocking(move || {
            let mut service = inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            service.call(&caller, key_request, now)
        })
        .await
        .map_err(|_| Status::internal("key service task failed"))?;
        outcome.map_err(status)
    }
}

/// Records a handshake's outcome in the audit log (on a blocking thread: the store may
/// block on consensus). A failure to record is logged; the connection's fate is decided
/// by the handshake alone.
async fn audit_handshake<S: KeyStoreBackend + Send + 'static>(
    service: Arc<Mutex<KeyService<S>>>,
    outcome: Result<&Caller, &str>,
    remote: std::net::SocketAddr,
) {
    let outcome = outcome.cloned().map_err(str::to_owned);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let recorded = tokio::task::spawn_blocking(move || {
        let mut service = service.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        service.audit_handshake(outcome.as_ref().map_err(String::as_str), &remote.to_string(), now)
    })
    .await;
    if !matches!(recorded, Ok(Ok(()))) {
        tracing::error!(%remote, "key service: the handshake could not be audited");
    }
}

/// Why a storage node holds no master key from the key service.
#[derive(Debug)]
#[non_exhaustive]
pub enum FetchError {
    /// The node's TLS files could not be read.
    Tls(String),
    /// No connection to the key service (address, handshake, CA).
    Connect(String),
    /// The service refused or failed the call (a role other than server is refused).
    Refused(Status),
    /// The answer was not a 32-byte key.
    Malformed,
    /// The key could not be kept (locked memory under `MemoryLocking::Required`).
    Keep(KeyManagerError),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Tls(why) => write!(f, "the node's TLS files: {why}"),
            FetchError::Connect(why) => write!(f, "no connection to the key service: {why}"),
            FetchError::Refused(status) => {
                write!(f, "the key service refused: {:?} {}", status.code(), status.message())
            }
            FetchError::Malformed => f.write_str("the key service's answer is not a 32-byte key"),
            FetchError::Keep(error) => write!(f, "the key could not be kept: {error}"),
        }
    }
}

impl std::error::Error for FetchError {}

/// A storage node fetches master-key `epoch` (`None`: the current one) from the key service
/// at `endpoint` over mTLS with its own certificate (`paths`; the server role), and keeps
/// it in `into`'s locked memory. Returns the epoch fetched.
pub async fn fetch_master_key(
    paths: &TlsPaths,
    endpoint: std::net::SocketAddr,
    server_name: &str,
    epoch: Option<u32>,
    into: &mut FetchedMasterKeys,
) -> Result<u32, FetchError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|error| FetchError::Tls(format!("{}: {error}", path.display())))
    };
    let (ca, cert) = (read(&paths.ca)?, read(&paths.cert)?);
    let key = Zeroizing::new(read(&paths.key)?);
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(TlsIdentity::from_pem(cert, key.as_slice()))
        .domain_name(server_name);
    let channel = Channel::from_shared(format!("https://{endpoint}"))
        .map_err(|error| FetchError::Connect(error.to_string()))?
        .tls_config(tls)
        .map_err(|error| FetchError::Tls(error.to_string()))?
        .connect()
        .await
        .map_err(|error| FetchError::Connect(error.to_string()))?;
    let request = FetchMasterKeyRequest { epoch: epoch.unwrap_or(0) };
    let reply = KeyServiceClient::new(channel)
        .fetch_master_key(request)
        .await
        .map_err(FetchError::Refused)?
        .into_inner();
    // Both buffers are zeroed when they drop; no plain copy of the key is made.
    let bytes = Zeroizing::new(reply.key);
    if bytes.len() != KEY_LEN {
        return Err(FetchError::Malformed);
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&bytes);
    into.insert(reply.epoch, reply.current_epoch, key).map_err(FetchError::Keep)?;
    Ok(reply.epoch)
}

/// The wire status of a refusal: as little as the caller needs (STYLE 12).
fn status(error: ServiceError) -> Status {
    match error {
        ServiceError::AccessDenied => Status::permission_denied("access denied"),
        ServiceError::TenantKeysDestroyed => Status::failed_precondition("tenant keys destroyed"),
        ServiceError::Refused(why) => Status::failed_precondition(why),
        ServiceError::Unavailable(_) => Status::unavailable("key service unavailable"),
        _ => Status::internal("key service"),
    }
}

fn unexpected() -> Status {
    Status::internal("unexpected key service reply")
}

fn epoch(reply: KeyReply) -> Result<Response<EpochReply>, Status> {
    match reply {
        KeyReply::Epoch(epoch) => Ok(Response::new(EpochReply { epoch })),
        _ => Err(unexpected()),
    }
}

fn names(reply: KeyReply) -> Result<Response<NamesReply>, Status> {
    match reply {
        KeyReply::Names(names) => Ok(Response::new(NamesReply { names })),
        _ => Err(unexpected()),
    }
}

fn empty(reply: KeyReply) -> Result<Response<Empty>, Status> {
    match reply {
        KeyReply::Done => Ok(Response::new(Empty {})),
        _ => Err(unexpected()),
    }
}

#[tonic::async_trait]
impl<S: KeyStoreBackend + Send + 'static> KeyServiceApi for GrpcKeyService<S> {
    async fn create_key(
        &self,
        request: Request<CreateKeyRequest>,
    ) -> Result<Response<EpochReply>, Status> {
        epoch(
            self.call(request, |r| KeyRequest::Create { name: r.name, isolated: r.isolated })
                .await?,
        )
    }

    async fn import_key(
        &self,
        request: Request<ImportKeyRequest>,
    ) -> Result<Response<EpochReply>, Status> {
        let reply = self
            .call(request, |r| KeyRequest::Import {
                name: r.name,
                material: Zeroizing::new(r.material),
            })
            .await?;
        epoch(reply)
    }

    async fn delete_key(&self, request: Request<KeyName>) -> Result<Response<Empty>, Status> {
        empty(self.call(request, |r| KeyRequest::Delete { name: r.name }).await?)
    }

    async fn list_keys(
        &self,
        request: Request<ListKeysRequest>,
    ) -> Result<Response<NamesReply>, Status> {
        let pattern =
            |r: ListKeysRequest| if r.pattern.is_empty() { None } else { Some(r.pattern) };
        names(self.call(request, |r| KeyRequest::List { pattern: pattern(r) }).await?)
    }

    async fn rotate_key(&self, request: Request<KeyName>) -> Result<Response<EpochReply>, Status> {
        epoch(self.call(request, |r| KeyRequest::Rotate { name: r.name }).await?)
    }

    async fn generate_data_key(
        &self,
        request: Request<KeyName>,
    ) -> Result<Response<DataKeyReply>, Status> {
        match self.call(request, |r| KeyRequest::Generate { name: r.name }).await? {
            KeyReply::DataKey { plaintext, ciphertext } => {
                Ok(Response::new(DataKeyReply { plaintext: plaintext.to_vec(), ciphertext }))
            }
            _ => Err(unexpected()),
        }
    }

    async fn decrypt(
        &self,
        request: Request<DecryptRequest>,
    ) -> Result<Response<DecryptReply>, Status> {
        let make =
            |r: DecryptRequest| KeyRequest::Decrypt { name: r.name, ciphertext: r.ciphertext };
        match self.call(request, make).await? {
            KeyReply::Plaintext(plaintext) => {
                Ok(Response::new(DecryptReply { plaintext: plaintext.to_vec() }))
            }
            _ => Err(unexpected()),
        }
    }

    async fn status(&self, request: Request<Empty>) -> Result<Response<StatusReply>, Status> {
        match self.call(request, |_| KeyRequest::Status).await? {
            KeyReply::Status(status) => Ok(Response::new(StatusReply {
                root_source: status.root_source,
                master_epoch: status.master_epoch.unwrap_or(0),
                cache_ttl_secs: status.cache_ttl_secs,
                cache_memory_locked: status.cache_memory_locked,
                non_dumpable: status.non_dumpable,
                mlock_failures: status.mlock_failures,
            })),
            _ => Err(unexpected()),
        }
    }

    async fn fetch_master_key(
        &self,
        request: Request<FetchMasterKeyRequest>,
    ) -> Result<Response<MasterKeyReply>, Status> {
        let make = |r: FetchMasterKeyRequest| KeyRequest::FetchMaster {
            epoch: (r.epoch != 0).then_some(r.epoch),
        };
        match self.call(request, make).await? {
            // The reply's buffer is prost's and is not zeroed after tonic encodes it: the
            // key's bytes outlive this call in freed memory of this process (which holds
            // them anyway) until reused.
            KeyReply::MasterKey { epoch, current, key } => Ok(Response::new(MasterKeyReply {
                epoch,
                current_epoch: current,
                key: key.to_vec(),
            })),
            _ => Err(unexpected()),
        }
    }

    async fn write_policy(
        &self,
        request: Request<WritePolicyRequest>,
    ) -> Result<Response<Empty>, Status> {
        let make = |r: WritePolicyRequest| KeyRequest::PolicyWrite {
            name: r.name,
            allow: r.allow,
            deny: r.deny,
        };
        empty(self.call(request, make).await?)
    }

    async fn read_policy(
        &self,
        request: Request<PolicyName>,
    ) -> Result<Response<PolicyReply>, Status> {
        match self.call(request, |r| KeyRequest::PolicyRead { name: r.name }).await? {
            KeyReply::Policy { allow, deny } => Ok(Response::new(PolicyReply { allow, deny })),
            _ => Err(unexpected()),
        }
    }

    async fn list_policies(&self, request: Request<Empty>) -> Result<Response<NamesReply>, Status> {
        names(self.call(request, |_| KeyRequest::PolicyList).await?)
    }

    async fn delete_policy(&self, request: Request<PolicyName>) -> Result<Response<Empty>, Status> {
        empty(self.call(request, |r| KeyRequest::PolicyDelete { name: r.name }).await?)
    }

    async fn assign_identity(
        &self,
        request: Request<AssignIdentityRequest>,
    ) -> Result<Response<Empty>, Status> {
        let make = |r: AssignIdentityRequest| KeyRequest::IdentityAssign {
            identity: r.identity,
            policy: r.policy,
        };
        empty(self.call(request, make).await?)
    }

    async fn delete_identity(&self, request: Request<Identity>) -> Result<Response<Empty>, Status> {
        empty(self.call(request, |r| KeyRequest::IdentityDelete { identity: r.identity }).await?)
    }

    async fn describe_identity(
        &self,
        request: Request<Identity>,
    ) -> Result<Response<IdentityReply>, Status> {
        match self.call(request, |r| KeyRequest::IdentityDescribe { identity: r.identity }).await? {
            KeyReply::Identity { policy } => {
                Ok(Response::new(IdentityReply { policy: policy.unwrap_or_default() }))
            }
            _ => Err(unexpected()),
        }
    }

    async fn list_identities(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<NamesReply>, Status> {
        names(self.call(request, |_| KeyRequest::IdentityList).await?)
    }
}

/// Serves the key service on `listener` until `shutdown` resolves: TLS 1.3 with client
/// certificates verified against the CA and the CRL in force, HTTP/2 (ALPN `h2`). Every
/// admitted handshake is audited (it is a client of the key service); failed ones at a
/// bounded rate, so a flood of bad handshakes cannot flood the log.
pub async fn serve<S: KeyStoreBackend + Send + 'static>(
    listener: TcpListener,
    tls: TlsContext,
    service: Arc<Mutex<KeyService<S>>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), io::Error> {
    let failures = Arc::new(RateLimited::new(
        HANDSHAKE_FAILURES_AUDITED_PER_S,
        HANDSHAKE_FAILURES_AUDITED_BURST,
    ));
    let audited = Arc::clone(&service);
    let on_handshake: OnHandshake = Arc::new(move |outcome, remote| {
        let (service, failures) = (Arc::clone(&audited), Arc::clone(&failures));
        Box::pin(async move {
            match outcome {
                Ok(caller) => audit_handshake(service, Ok(&caller), remote).await,
                Err(why) => match failures.admit() {
                    Some(0) => audit_handshake(service, Err(&why), remote).await,
                    Some(left_out) => {
                        let why = format!("{why} ({left_out} earlier failures not recorded)");
                        audit_handshake(service, Err(&why), remote).await;
                    }
                    None => {}
                },
            }
        })
    });
    let incoming = accept_tls(listener, &tls, on_handshake)?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let router = tonic::transport::Server::builder()
        .add_service(KeyServiceServer::new(GrpcKeyService::new(service, tls)));
    serve_until_stopped(router, incoming, stopping).await
}

#[cfg(test)]
pub(crate) mod tests;
