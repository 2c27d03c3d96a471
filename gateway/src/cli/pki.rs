//! `kiseki-server ca`, `cert` and `identity`: thin shells over `kiseki_security`'s CA
//! tooling and identities. They check that the arguments fit together, call the library,
//! and print what was written where; the library does the rest and keeps its invariants
//! (keys 0600, no overwriting, CRL numbers that grow).

use std::io::Write;
use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use kiseki_security::constants::{CA_VALIDITY_DEFAULT_DAYS, LEAF_VALIDITY_DEFAULT_DAYS};
use kiseki_security::{
    CRL_FILE, CertificateAuthority, ENV_TRUST_DOMAIN, IdentityRules, IssueRequest, KesIdentity,
    OrgId, PeerIdentity, Principal, RevokeOutcome, Role, SpiffeId, SubjectAltName, TrustDomain,
    Validity, check_leaf_days, file_stem, read_certificates,
};

use super::CliError;

#[derive(Debug, Subcommand)]
pub(super) enum CaCommand {
    /// Create a new P-256 cluster CA: DIR/ca.crt, DIR/ca.key (mode 0600) and an empty
    /// DIR/crl.pem. Refuses to overwrite an existing CA.
    Init {
        /// Directory to create the CA in (created with mode 0700 if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The CA's common name.
        #[arg(long, value_name = "CN", default_value = "Kiseki Cluster CA")]
        name: String,
        /// How long the CA is valid, in days.
        #[arg(long, value_name = "N", default_value_t = CA_VALIDITY_DEFAULT_DAYS)]
        days: u32,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum CertCommand {
    /// Issue a certificate for a role, with a new P-256 key: OUT/<name>.crt and
    /// OUT/<name>.key (mode 0600). The OU names the role: kiseki-server,
    /// kiseki-keyserver, kiseki-admin, kiseki-sre, or tenant-<org>.
    Issue {
        /// The CA directory (from `ca init`, or the seed's openssl ca.crt and ca.key).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// What the holder is.
        #[arg(long, value_enum)]
        role: CertRole,
        /// The certificate's common name (a node's host name, a workload's name).
        #[arg(long, value_name = "CN")]
        name: String,
        /// The tenant organization (required with --role tenant, refused otherwise).
        #[arg(long, value_name = "ORG")]
        org: Option<String>,
        /// A SPIFFE id for the URI SAN, making the certificate an X.509-SVID:
        /// spiffe://<trust-domain>/tenant/<org>/[project/<p>/]workload/<w> (tenant only;
        /// its org must be --org).
        #[arg(long, value_name = "URI")]
        spiffe: Option<String>,
        /// DNS names and IP addresses the certificate is valid for (servers need theirs).
        #[arg(long, value_name = "DNS_OR_IP", num_args = 1..)]
        san: Vec<String>,
        /// How long the certificate is valid, in days.
        #[arg(long, value_name = "N", default_value_t = LEAF_VALIDITY_DEFAULT_DAYS)]
        days: u32,
        /// Directory to write the certificate and key to (created with mode 0700 if
        /// missing). Existing files are never overwritten.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Revoke a certificate: add it to the CA's CRL (signed by the CA, CRL number + 1).
    /// Nodes pick the new CRL up at their next reload, without a restart.
    Revoke {
        /// The CA directory that issued the certificate.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The certificate to revoke (PEM or DER).
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// The CRL to update or create [default: <CA DIR>/crl.pem].
        #[arg(long, value_name = "FILE")]
        crl: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum IdentityCommand {
    /// Print the identities a certificate gives: its KES identity (SHA-256 of the public
    /// key, what key-manager policies bind to), its fingerprint, and what a Kiseki node
    /// derives from it (role and org from the OU, a SPIFFE id, or the fingerprint UUID).
    Of {
        /// The certificate (PEM or DER; the first of a chain).
        #[arg(value_name = "CERT")]
        cert: PathBuf,
        /// The SPIFFE trust domain to check an SVID against [default:
        /// $KISEKI_SPIFFE_TRUST_DOMAIN].
        #[arg(long, value_name = "DOMAIN")]
        trust_domain: Option<String>,
    },
}

/// The roles `cert issue` makes certificates for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum CertRole {
    /// A storage node (kiseki-server): serves and connects to other nodes.
    Server,
    /// The key manager (kiseki-keyserver).
    Keyserver,
    /// A cluster administrator (kiseki-admin).
    Admin,
    /// A read-only site reliability engineer (kiseki-sre).
    Sre,
    /// A tenant's workload (tenant-<org>); needs --org.
    Tenant,
}

pub(super) fn ca(command: CaCommand, out: &mut dyn Write) -> Result<(), CliError> {
    let CaCommand::Init { out: dir, name, days } = command;
    if days == 0 {
        return Err(CliError::Usage("--days must be at least 1".to_owned()));
    }
    let ca = CertificateAuthority::init(&dir, &name, Validity::days_from_now(days))?;
    let identity = KesIdentity::of_certificate(ca.certificate_der());
    writeln!(out, "created cluster CA {name:?} in {}", dir.display())?;
    writeln!(out, "  certificate: {}", dir.join(kiseki_security::CA_CERT_FILE).display())?;
    writeln!(
        out,
        "  private key: {} (mode 0600)",
        dir.join(kiseki_security::CA_KEY_FILE).display()
    )?;
    writeln!(out, "  CRL:         {}", dir.join(CRL_FILE).display())?;
    if let Some(identity) = identity {
        writeln!(out, "  kes-identity: {identity}")?;
    }
    Ok(())
}

pub(super) fn cert(command: CertCommand, out: &mut dyn Write) -> Result<(), CliError> {
    match command {
        CertCommand::Issue { ca, role, name, org, spiffe, san, days, out: dir } => {
            let request = IssueRequest {
                role: role_of(role, org)?,
                common_name: name,
                spiffe_id: spiffe
                    .map(|uri| SpiffeId::parse(&uri))
                    .transpose()
                    .map_err(|error| CliError::Usage(format!("--spiffe: {error}")))?,
                subject_alt_names: san
                    .iter()
                    .map(|name| SubjectAltName::parse(name))
                    .collect::<Result<_, _>>()?,
                validity: Validity::days_from_now(check_leaf_days(days)?),
            };
            let authority = CertificateAuthority::load(&ca)?;
            let issued = authority.issue(&request)?;
            let stem = file_stem(&request.common_name);
            let (cert_path, key_path) = issued.write_files(&dir, &stem)?;
            let rules =
                IdentityRules::new(request.spiffe_id.as_ref().map(|id| id.trust_domain().clone()));
            let identity = PeerIdentity::from_der(issued.certificate_der(), &rules)?;
            writeln!(out, "issued {} certificate for {:?}", request.role, request.common_name)?;
            writeln!(out, "  certificate: {}", cert_path.display())?;
            writeln!(out, "  private key: {} (mode 0600)", key_path.display())?;
            writeln!(out, "  kes-identity: {}", identity.kes_identity())?;
            Ok(())
        }
        CertCommand::Revoke { ca, cert, crl } => {
            let crl = crl.unwrap_or_else(|| ca.join(CRL_FILE));
            let authority = CertificateAuthority::load(&ca)?;
            let certs = read_certificates(&cert)?;
            match authority.revoke(&certs[0], &crl)? {
                RevokeOutcome::Revoked { crl_number, revoked_count } => writeln!(
                    out,
                    "revoked {}; {} is now CRL number {crl_number} listing {revoked_count} \
                     certificate(s)",
                    cert.display(),
                    crl.display()
                )?,
                RevokeOutcome::AlreadyRevoked { crl_number } => writeln!(
                    out,
                    "{} was already revoked in {} (CRL number {crl_number}); nothing changed",
                    cert.display(),
                    crl.display()
                )?,
            }
            Ok(())
        }
    }
}

pub(super) fn identity(command: IdentityCommand, out: &mut dyn Write) -> Result<(), CliError> {
    let IdentityCommand::Of { cert, trust_domain } = command;
    let trust_domain = match trust_domain.or_else(|| std::env::var(ENV_TRUST_DOMAIN).ok()) {
        Some(domain) if !domain.is_empty() => Some(
            TrustDomain::parse(&domain)
                .map_err(|error| CliError::Usage(format!("trust domain: {error}")))?,
        ),
        _ => None,
    };
    let certs = read_certificates(&cert)?;
    let der = &certs[0];
    match KesIdentity::of_certificate(der) {
        Some(kes) => writeln!(out, "kes-identity: {kes}")?,
        None => writeln!(out, "kes-identity: (not an X.509 certificate)")?,
    }
    let identity = PeerIdentity::from_der(der, &IdentityRules::new(trust_domain))?;
    let hex: String = identity.fingerprint_sha256().iter().map(|b| format!("{b:02x}")).collect();
    writeln!(out, "fingerprint-sha256: {hex}")?;
    writeln!(out, "fingerprint-uuid: {}", identity.fingerprint_uuid())?;
    let (source, spiffe) = match identity.principal() {
        Principal::Spiffe(id) => ("spiffe", Some(id)),
        Principal::OrganizationalUnit => ("ou", None),
        Principal::Fingerprint(_) => ("fingerprint", None),
    };
    writeln!(out, "identity-from: {source}")?;
    match identity.role() {
        Some(role) => writeln!(out, "role: {role}")?,
        None => writeln!(out, "role: none (every request will be denied)")?,
    }
    if let Some(org) = identity.org() {
        writeln!(out, "org: {org}")?;
    }
    if let Some(spiffe) = spiffe {
        writeln!(out, "spiffe-id: {spiffe}")?;
        if let Some(project) = spiffe.project() {
            writeln!(out, "project: {project}")?;
        }
        writeln!(out, "workload: {}", spiffe.workload())?;
    }
    if let Some(common_name) = identity.common_name() {
        writeln!(out, "common-name: {common_name}")?;
    }
    Ok(())
}

/// The role a `--role` (and `--org`) name.
fn role_of(role: CertRole, org: Option<String>) -> Result<Role, CliError> {
    let role = match (role, org) {
        (CertRole::Tenant, Some(org)) => Role::Workload {
            org: OrgId::parse(&org).map_err(|error| CliError::Usage(format!("--org: {error}")))?,
        },
        (CertRole::Tenant, None) => {
            return Err(CliError::Usage("--role tenant needs --org ORG".to_owned()));
        }
        (_, Some(_)) => {
            return Err(CliError::Usage("--org applies only to --role tenant".to_owned()));
        }
        (CertRole::Server, None) => Role::Server,
        (CertRole::Keyserver, None) => Role::KeyServer,
        (CertRole::Admin, None) => Role::ClusterAdmin,
        (CertRole::Sre, None) => Role::Sre,
    };
    Ok(role)
}
