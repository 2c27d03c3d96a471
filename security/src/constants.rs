//! Every limit and fixed value of the security crate, with the reason it has its value.
//!
//! The envelope's field offsets live beside its byte map in `envelope.rs`, where the
//! compile-time checks can see them; this file holds what a reader tunes or cites.

/// Length of every symmetric secret: master keys, tenant secrets, tenant id keys and DEKs.
/// 32 bytes is AES-256's key, SHA-256's output (so HKDF-Expand runs one block), and the
/// key length RFC 2104 recommends for HMAC-SHA256.
pub const KEY_LEN: usize = 32;

/// Length of a chunk id: a SHA-256 digest or an HMAC-SHA256 tag.
pub const CHUNK_ID_LEN: usize = 32;

/// Length of a tenant id: a UUID's 16 bytes. All zeros (the nil UUID) means "no tenant"
/// in an envelope, so no tenant may have it.
pub const TENANT_ID_LEN: usize = 16;

/// AES-GCM nonce: 96 bits, the length GCM is specified for (other lengths are hashed into
/// one and weaken the bounds). Random per seal, drawn by aws-lc itself.
pub const NONCE_LEN: usize = 12;

/// AES-GCM tag: the full 128 bits; truncated tags weaken forgery bounds and save nothing
/// that matters next to a chunk.
pub const TAG_LEN: usize = 16;

/// HKDF `info` for chunk DEKs. Versioned so that a future derivation (another hash, more
/// inputs) can never produce the same key as this one.
pub const DEK_INFO: &[u8] = b"kiseki-chunk-dek-v1";

/// First four bytes of every envelope: "KSKE", Kiseki envelope. Lets a scrubber or a human
/// with `xxd` tell an envelope from garbage before any field is trusted.
pub const ENVELOPE_MAGIC: [u8; 4] = *b"KSKE";

/// The only envelope format this build writes and reads. A reader refuses any other
/// version rather than guess at its layout.
pub const ENVELOPE_VERSION: u16 = 1;

/// Algorithm id of AES-256-GCM, the only one defined. 0 is left unused so that a zeroed
/// header never names a real algorithm.
pub const ALGORITHM_AES_256_GCM: u8 = 1;

/// Flag bit: the chunk belongs to a tenant that opted out of cross-tenant dedup; its id is
/// an HMAC, its DEK takes the tenant secret, and the tenant id is authenticated.
pub const FLAG_ISOLATED_TENANT: u8 = 0b0000_0001;

/// Every flag bit this version defines. A reader refuses an envelope with any other bit
/// set: an unknown flag may change how the chunk must be opened.
pub const FLAGS_KNOWN: u8 = FLAG_ISOLATED_TENANT;

/// Largest plaintext one envelope carries: 64 MiB. The engine's largest chunk and the
/// device layer's largest single I/O (`IO_SIZE_MAX_BYTES`) are the same, so an envelope
/// always fits one write; it also bounds what a parser accepts from a peer, and keeps far
/// below AES-GCM's limit of 2^39 - 256 bits per nonce.
pub const CHUNK_PLAINTEXT_MAX_BYTES: u32 = 64 << 20;

/// Largest tenant-wrapped derivation parameters: 256 bytes. Today they are a 32-byte
/// tenant secret wrapped under the tenant KEK (AES-GCM: 12 + 32 + 16 = 60 bytes); an
/// external KMS's ciphertext blob for 32 bytes is under 200. 256 leaves room for either
/// and for key ids, and keeps the authenticated header of a small chunk small.
pub const WRAPPED_PARAMS_MAX_BYTES: u16 = 256;

/// Longest SPIFFE id accepted: 2048 bytes, the X.509-SVID standard's limit (URIs longer
/// than that are not portable across SPIFFE implementations).
pub const SPIFFE_ID_MAX_BYTES: usize = 2048;

/// Longest SPIFFE trust domain accepted: 255 bytes, the SPIFFE-ID standard's limit (a DNS
/// name's length).
pub const TRUST_DOMAIN_MAX_BYTES: usize = 255;

/// How often the CRL file is re-read by default: 60 s. A revocation takes effect within a
/// minute without a restart; reading a CRL file of a few kilobytes once a minute costs
/// nothing measurable.
pub const CRL_RELOAD_INTERVAL_DEFAULT_SECS: u64 = 60;

/// Largest CRL file read: 16 MiB. One revoked entry is about 40 bytes, so this holds some
/// 400,000 revocations, far beyond one cluster's certificates, while a runaway or hostile
/// file cannot make a reload allocate without bound.
pub const CRL_FILE_MAX_BYTES: u64 = 16 << 20;

/// Largest certificate or key file read: 1 MiB. A PEM chain of a leaf and a few
/// intermediates is a few kilobytes.
pub const PEM_FILE_MAX_BYTES: u64 = 1 << 20;

/// Random bytes in a certificate serial number: 16 (128 bits, top bit cleared so the DER
/// integer stays positive). RFC 5280 allows up to 20 octets and asks for unpredictable
/// serials; 120+ random bits make a collision between two issued certificates negligible.
pub const SERIAL_LEN: usize = 16;

/// Default life of an issued leaf certificate: 365 days, the seed's openssl example.
pub const LEAF_VALIDITY_DEFAULT_DAYS: u32 = 365;

/// Longest life of an issued leaf certificate: 3650 days. Longer than the default CA life
/// makes no sense, and a typo like `--days 36500` should be caught rather than honoured.
pub const LEAF_VALIDITY_MAX_DAYS: u32 = 3650;

/// Default life of the cluster CA: 3650 days, the seed's openssl example.
pub const CA_VALIDITY_DEFAULT_DAYS: u32 = 3650;

/// How far before "now" an issued certificate's `notBefore` is set: 5 minutes, so a peer
/// whose clock runs a little behind the issuer's does not see a fresh certificate as not
/// yet valid.
pub const CERT_BACKDATE_SECS: u64 = 300;

/// How far ahead a CRL's `nextUpdate` is set: 30 days. Verifiers here do not enforce it
/// (a stale CRL still revokes what it lists); it tells other tools when to expect the next.
pub const CRL_NEXT_UPDATE_DAYS: u32 = 30;

// Authorization (`authz`).

/// Longest API path a request may name: `/v1/` plus the longest `<api>/<op>` (under 32
/// bytes) plus an argument of [`API_ARGUMENT_MAX_BYTES`], with room to spare. A longer
/// path is refused before any pattern is matched against it.
pub const API_PATH_MAX_BYTES: usize = 512;

/// Longest `<argument>` segment: 255 bytes, a file-name component's limit, which covers
/// key names, S3 bucket names (63), chunk ids in hex (64) and org ids (63).
pub const API_ARGUMENT_MAX_BYTES: usize = 255;

/// Longest pattern of a KES policy: as long as the longest path it could match.
pub const API_PATTERN_MAX_BYTES: usize = API_PATH_MAX_BYTES;

/// Most `*` in one pattern. The glob matcher backtracks over its stars, though it gives up
/// as soon as one attempt runs out of input; with stars kept inside a segment of at most
/// 255 characters, the slowest of 20,000 random 8-star patterns took about 4 ms (release
/// build) against a 255-character argument, most take microseconds, and no sensible
/// policy needs more than two or three stars.
pub const API_PATTERN_MAX_WILDCARDS: usize = 8;

/// Largest policy, scope or KES policy file: 1 MiB, far above a real deployment's (a few
/// KiB) and small enough to parse in milliseconds and hold in memory twice.
pub const POLICY_FILE_MAX_BYTES: usize = 1 << 20;

/// Longest role or policy name; names go into logs and audit records.
pub const POLICY_NAME_MAX_BYTES: usize = 128;

/// Most roles in a policy or scope file.
pub const POLICY_ROLES_MAX: usize = 1024;

/// Most identities in one scope file, over all its roles.
pub const SCOPE_IDENTITIES_MAX: usize = 65_536;

/// Longest certificate common name authorization accepts: X.509's upper bound is 64
/// characters, which UTF-8 can spell in up to 256 bytes.
pub const COMMON_NAME_MAX_BYTES: usize = 256;

/// Most policies in a KES policy file.
pub const KES_POLICIES_MAX: usize = 1024;

/// Most allow or deny patterns in one KES policy: KES policies hold a handful; 128 is
/// plenty and bounds what one call can cost to match.
pub const KES_POLICY_PATTERNS_MAX: usize = 128;

/// Most identities bound in one KES policy file.
pub const KES_IDENTITIES_MAX: usize = 65_536;

/// Longest access grant: 24 hours. Long enough for one debugging or migration session
/// with its handover; anything longer is asked for again, and approved again.
pub const ACCESS_GRANT_MAX_DURATION_S: u64 = 24 * 3600;

/// How long a request waits for the tenant admin: 72 hours, a long weekend. After that it
/// can no longer be approved, so an old forgotten request cannot be approved by surprise.
pub const ACCESS_REQUEST_PENDING_MAX_S: u64 = 72 * 3600;

/// Most access requests pending or active at once: far above real use, and a bound on the
/// memory a misbehaving admin client can take.
pub const ACCESS_REQUESTS_MAX: usize = 4096;

/// Bytes of randomness in an admission token: 256 bits, twice the 128 the issue asks for,
/// so that guessing one within its lifetime is out of reach even at millions of tries a
/// second.
pub const ADMISSION_TOKEN_BYTES: usize = 32;
const _: () = assert!(ADMISSION_TOKEN_BYTES * 8 >= 128, "at least 128 bits of entropy");

/// Longest lifetime of an admission token: a week covers shipping a node to a site; a
/// token is meant to be used within hours.
pub const ADMISSION_TOKEN_TTL_MAX_SECS: u64 = 7 * 24 * 3600;

/// Default lifetime of an admission token: long enough to rack and install a node.
pub const ADMISSION_TOKEN_TTL_DEFAULT_SECS: u64 = 24 * 3600;
const _: () = assert!(ADMISSION_TOKEN_TTL_DEFAULT_SECS <= ADMISSION_TOKEN_TTL_MAX_SECS);

/// Most tokens the store keeps (unredeemed, or expired less than a day ago). Bounds the
/// store and the time a redemption spends comparing hashes; 1024 admits a large rack row.
pub const ADMISSION_TOKENS_MAX: usize = 1024;

/// Longest node name: 64 bytes. The name becomes the common name of the node's
/// certificates, and X.520 bounds a CN at 64 characters (a node name is ASCII, so bytes and
/// characters agree); a longer DNS name would mint a token no certificate could honour.
pub const NODE_NAME_MAX_BYTES: usize = 64;

/// Life of a certificate-granting certificate: 30 days. A CGC can only ask the admission
/// service for its node's role certificates and for its own renewal, which a node does
/// well within a month; a CGC left behind (a node retired without a revocation, a copied
/// key) stops working by itself within weeks. An expired CGC cannot renew itself: the node
/// is admitted again with a new token.
pub const ADMISSION_CGC_VALIDITY_DAYS: u32 = 30;

/// Life of a role certificate issued through admission: 30 days, the CGC's. The node renews
/// both with the same CGC on the same schedule, and a stolen role key is good for weeks,
/// not the year a hand-issued certificate gets ([`LEAF_VALIDITY_DEFAULT_DAYS`]).
pub const ADMISSION_ROLE_CERT_VALIDITY_DAYS: u32 = 30;

/// Most subject alternative names one admission request may ask for: a node has a name
/// and a few addresses; the bound keeps one request's certificate small.
pub const ADMISSION_SANS_MAX: usize = 16;

/// Largest PEM certificate signing request accepted: 16 KiB. A P-256 CSR is under 1 KiB
/// even with a long subject; the bound is checked before anything is parsed.
pub const CSR_PEM_MAX_BYTES: usize = 16 * 1024;

// JWT second stage (`jwt`).

/// Longest token accepted: 8 KiB. IdP tokens with a few custom claims are well under 2 KiB;
/// the bound keeps a peer from making us base64-decode and parse megabytes per request.
pub const JWT_MAX_BYTES: usize = 8 * 1024;

/// Default clock skew allowed on `exp`, `nbf` and `iat`: 30 s, what NTP-synchronised
/// hosts need with margin, and short next to token lifetimes (minutes to an hour).
pub const JWT_LEEWAY_DEFAULT_S: u64 = 30;

/// Largest configurable leeway: 5 minutes (Kerberos's classic skew limit). More would
/// quietly extend every token's life.
pub const JWT_LEEWAY_MAX_S: u64 = 300;

/// Shortest HS256 secret: 32 bytes, SHA-256's output length (RFC 7518 section 3.2 requires
/// a key at least as long as the hash output).
pub const HS256_SECRET_MIN_BYTES: usize = 32;

/// Smallest RSA modulus a JWKS key may have: 2048 bits, the floor aws-lc's RS256
/// verification enforces anyway; checked when the set is read so a weak key is skipped.
pub const JWT_RSA_MODULUS_MIN_BITS: usize = 2048;

/// Largest JWKS document: 64 KiB. A set of a dozen 4096-bit RSA keys is about 10 KiB.
pub const JWKS_MAX_BYTES: usize = 64 * 1024;

/// Most keys in one JWKS: 32. IdPs publish two or three (current, next, previous).
pub const JWKS_KEYS_MAX: usize = 32;

/// Default age at which cached JWKS keys are refreshed: 15 minutes. IdPs announce new keys
/// well ahead of use, and a token with an unknown `kid` triggers a refresh anyway.
pub const JWKS_MAX_AGE_DEFAULT_S: u64 = 15 * 60;

/// Default minimum time between two JWKS fetches: 60 s. Bounds what a flood of tokens with
/// made-up `kid`s can cost the IdP: one fetch a minute per node.
pub const JWKS_MIN_REFRESH_INTERVAL_DEFAULT_S: u64 = 60;

/// Default age after which cached JWKS keys are no longer used when refreshes keep
/// failing: 24 hours. The data path must not depend on the IdP being up at every moment
/// (seed 000), but a key the IdP may have withdrawn is not trusted for ever.
pub const JWKS_MAX_STALE_DEFAULT_S: u64 = 24 * 3600;
