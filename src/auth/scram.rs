//! SCRAM-SHA-256 (RFC 5802, RFC 7677) on both sides of pgveil, plus the
//! MD5 challenge: the server side verifies a client against the verifier
//! PostgreSQL stores and recovers the client's `ClientKey` from its proof;
//! the client side logs in to PostgreSQL with that key (or, for
//! `auth_user`, with a password). No function here sees a client's password.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The mechanisms PostgreSQL names.
pub const SCRAM: &str = "SCRAM-SHA-256";
/// With channel binding.
pub const SCRAM_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// Highest iteration count pgveil computes for a password it holds
/// (`auth_user`); PostgreSQL's default is 4096.
const MAX_ITERATIONS: u32 = 1_000_000;
/// The one channel-binding type PostgreSQL implements.
const END_POINT: &str = "tls-server-end-point";

/// Why an exchange failed. Messages name the step, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// The peer's message does not follow RFC 5802.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// Channel binding was announced, requested or answered inconsistently.
    #[error("SCRAM channel binding negotiation error: {0}")]
    Binding(&'static str),
    /// The client's proof does not match the verifier.
    #[error("client proof does not match")]
    WrongProof,
    /// The server's signature does not match (the server does not hold the
    /// verifier pgveil used).
    #[error("server signature does not match")]
    WrongServer,
    /// The server answered with a salt or iteration count other than the
    /// verifier's: the password changed since the lookup.
    #[error("the stored verifier changed during the login")]
    StaleVerifier,
    /// The server ended the exchange with `e=`.
    #[error("server rejected the exchange: {0}")]
    Server(String),
    /// The operating system's random source failed: no nonce or salt can be
    /// trusted, so the exchange stops.
    #[error("no randomness available")]
    Random,
}

/// `N` bytes from the operating system; an error rather than zeros.
pub fn random<const N: usize>() -> Result<[u8; N], ScramError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|_| ScramError::Random)?;
    Ok(bytes)
}

/// A parsed `rolpassword`.
#[derive(Clone)]
pub enum Secret {
    /// `SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`.
    Scram(Verifier),
    /// `md5` and the hex MD5 of password and user name.
    Md5(String),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Secret::Scram(_) => "Secret::Scram(..)",
            Secret::Md5(_) => "Secret::Md5(..)",
        })
    }
}

/// A SCRAM-SHA-256 verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    /// Hash iterations.
    pub iterations: u32,
    /// Salt.
    pub salt: Vec<u8>,
    /// `H(ClientKey)`.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; 32],
}

impl Secret {
    /// Parses PostgreSQL's stored form; `None` for anything else (a
    /// plaintext password stored by a pre-10 server, an unknown scheme).
    pub fn parse(stored: &str) -> Option<Secret> {
        if let Some(hex) = stored.strip_prefix("md5") {
            return (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| Secret::Md5(hex.to_ascii_lowercase()));
        }
        let rest = stored.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        Some(Secret::Scram(Verifier {
            iterations: iterations.parse().ok().filter(|i| *i > 0)?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored_key).ok()?.try_into().ok()?,
            server_key: B64.decode(server_key).ok()?.try_into().ok()?,
        }))
    }
}

impl Verifier {
    /// A verifier nobody can match, for users that do not exist or have no
    /// usable secret: the exchange runs to the end and fails like a wrong
    /// password. Its salt is derived from the user name with a per-process
    /// secret (PostgreSQL's `scram_mock_salt` idea), so repeated attempts
    /// see one stable salt, as for a real role, and the default iteration
    /// count.
    pub fn unmatchable(user: &str) -> Result<Verifier, ScramError> {
        static SECRET: std::sync::OnceLock<Option<[u8; 32]>> = std::sync::OnceLock::new();
        let secret = SECRET
            .get_or_init(|| random::<32>().ok())
            .ok_or(ScramError::Random)?;
        let salt = hmac(&secret, user.as_bytes());
        Ok(Verifier {
            iterations: 4096,
            salt: salt[..16].to_vec(),
            stored_key: random::<32>()?,
            server_key: random::<32>()?,
        })
    }

    /// The verifier of a password (SASLprep is not applied: passwords given
    /// to pgveil must be ASCII or already normalised).
    pub fn from_password(password: &[u8], salt: &[u8], iterations: u32) -> (Verifier, [u8; 32]) {
        let mut salted = hi(password, salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let server_key = hmac(&salted, b"Server Key");
        salted.zeroize();
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        (
            Verifier {
                iterations,
                salt: salt.to_vec(),
                stored_key,
                server_key,
            },
            client_key,
        )
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length: the error branch cannot happen.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0u8; 32],
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// RFC 5802's `Hi()`: PBKDF2-HMAC-SHA-256 with one block.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &first);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn nonce() -> Result<String, ScramError> {
    Ok(B64.encode(random::<18>()?))
}

/// The `ClientKey` recovered from a verified proof; wiped on drop.
pub struct ClientKey(pub [u8; 32]);

impl Drop for ClientKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// How the client framed channel binding in its gs2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gs2Flag {
    /// `n`: the client does not support binding.
    No,
    /// `y`: the client supports binding but believes the server does not.
    Yes,
    /// `p=tls-server-end-point`: bound to the TLS connection.
    Bound,
}

/// Reads the gs2 header of a client-first message: the flag and the
/// header's length. Used on its own by passthrough mode, which only needs
/// to see the flag.
pub fn gs2_header(client_first: &str) -> Result<(Gs2Flag, usize), ScramError> {
    let (flag, rest) = client_first
        .split_once(',')
        .ok_or(ScramError::Malformed("missing gs2 header"))?;
    let flag = match flag {
        "n" => Gs2Flag::No,
        "y" => Gs2Flag::Yes,
        p if p.strip_prefix("p=") == Some(END_POINT) => Gs2Flag::Bound,
        p if p.starts_with("p=") => return Err(ScramError::Binding("unsupported binding type")),
        _ => return Err(ScramError::Malformed("invalid gs2 flag")),
    };
    let (authzid, _) = rest
        .split_once(',')
        .ok_or(ScramError::Malformed("missing gs2 header"))?;
    if !authzid.is_empty() {
        return Err(ScramError::Malformed(
            "authorization identity is not supported",
        ));
    }
    Ok((flag, client_first.len() - rest.len() + authzid.len() + 1))
}

fn attribute(part: Option<&str>, name: char) -> Result<&str, ScramError> {
    part.and_then(|p| p.strip_prefix(name))
        .and_then(|p| p.strip_prefix('='))
        .ok_or(ScramError::Malformed("missing attribute"))
}

fn valid_nonce(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// pgveil as the SCRAM server a client authenticates to.
pub struct ServerExchange {
    verifier: Verifier,
    gs2: String,
    binding: Option<Vec<u8>>,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ServerExchange {
    /// Handles SASLInitialResponse. `offered_plus` holds pgveil's
    /// certificate hash when it offered SCRAM-SHA-256-PLUS. Returns the
    /// server-first message.
    pub fn start(
        mechanism: &str,
        client_first: &str,
        offered_plus: Option<&[u8]>,
        verifier: Verifier,
    ) -> Result<(ServerExchange, String), ScramError> {
        let (flag, header_len) = gs2_header(client_first)?;
        let binding = match (mechanism, flag, offered_plus) {
            (SCRAM_PLUS, Gs2Flag::Bound, Some(hash)) => Some(hash.to_vec()),
            (SCRAM_PLUS, _, _) => {
                return Err(ScramError::Binding(
                    "SCRAM-SHA-256-PLUS was selected without channel binding data",
                ));
            }
            (SCRAM, Gs2Flag::Bound, _) => {
                return Err(ScramError::Binding(
                    "channel binding data sent with SCRAM-SHA-256",
                ));
            }
            (SCRAM, Gs2Flag::Yes, Some(_)) => {
                return Err(ScramError::Binding(
                    "the client believes channel binding is unsupported, but it was offered",
                ));
            }
            (SCRAM, _, _) => None,
            _ => return Err(ScramError::Malformed("unknown mechanism")),
        };
        let (gs2, bare) = client_first.split_at(header_len);
        let mut parts = bare.split(',');
        let _user = attribute(parts.next(), 'n')?; // PostgreSQL uses the startup user
        let client_nonce = attribute(parts.next(), 'r')?;
        if !valid_nonce(client_nonce) {
            return Err(ScramError::Malformed("invalid nonce"));
        }
        let nonce = format!("{client_nonce}{}", self::nonce()?);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        Ok((
            ServerExchange {
                verifier,
                gs2: gs2.to_string(),
                binding,
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
                nonce,
            },
            server_first,
        ))
    }

    /// Handles the client-final message: checks binding, nonce and proof.
    /// Returns the client's key and the server-final message.
    pub fn finish(self, client_final: &str) -> Result<(ClientKey, String), ScramError> {
        let (without_proof, proof) = client_final
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("missing proof"))?;
        let mut parts = without_proof.split(',');
        let channel = B64
            .decode(attribute(parts.next(), 'c')?)
            .map_err(|_| ScramError::Malformed("invalid channel binding"))?;
        let mut expected = self.gs2.as_bytes().to_vec();
        if let Some(hash) = &self.binding {
            expected.extend_from_slice(hash);
        }
        if !ct_eq(&channel, &expected) {
            return Err(ScramError::Binding("channel binding data does not match"));
        }
        if attribute(parts.next(), 'r')? != self.nonce {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("invalid proof"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let mut key = ClientKey([0u8; 32]);
        for (k, (p, s)) in key.0.iter_mut().zip(proof.iter().zip(signature.iter())) {
            *k = p ^ s;
        }
        if !ct_eq(&Sha256::digest(key.0), &self.verifier.stored_key) {
            return Err(ScramError::WrongProof);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok((key, format!("v={}", B64.encode(server_signature))))
    }
}

/// What pgveil proves its identity with when it is the SCRAM client.
pub enum Credential<'a> {
    /// `auth_user`'s password.
    Password(&'a [u8]),
    /// A client's recovered key and the verifier it was checked against.
    Key(&'a ClientKey, &'a Verifier),
}

/// pgveil as the SCRAM client of PostgreSQL.
pub struct ClientExchange<'a> {
    credential: Credential<'a>,
    gs2: String,
    binding: Option<Vec<u8>>,
    client_first_bare: String,
    nonce: String,
    server_signature: Option<[u8; 32]>,
}

impl<'a> ClientExchange<'a> {
    /// Picks the mechanism from the server's list: SCRAM-SHA-256-PLUS when
    /// offered and `end_point` (the database certificate's hash) is known.
    /// On TLS without PLUS offered, the gs2 flag is `y` (as libpq's
    /// `channel_binding=prefer`): a PostgreSQL that supports binding then
    /// refuses the exchange, so someone relaying between pgveil and the
    /// database cannot strip the offer. Returns the exchange, the mechanism
    /// and the client-first message.
    pub fn start(
        credential: Credential<'a>,
        offered: &[String],
        end_point: Option<Vec<u8>>,
        tls: bool,
    ) -> Result<(ClientExchange<'a>, &'static str, String), ScramError> {
        let plus = offered.iter().any(|m| m == SCRAM_PLUS);
        let (mechanism, gs2, binding) = match (plus, end_point) {
            (true, Some(hash)) => (SCRAM_PLUS, format!("p={END_POINT},,"), Some(hash)),
            _ if offered.iter().any(|m| m == SCRAM) => {
                let flag = if tls && !plus { "y,," } else { "n,," };
                (SCRAM, flag.to_string(), None)
            }
            _ => {
                return Err(ScramError::Malformed(
                    "the server offers no usable SASL mechanism",
                ));
            }
        };
        let nonce = nonce()?;
        let client_first_bare = format!("n=,r={nonce}");
        let first = format!("{gs2}{client_first_bare}");
        Ok((
            ClientExchange {
                credential,
                gs2,
                binding,
                client_first_bare,
                nonce,
                server_signature: None,
            },
            mechanism,
            first,
        ))
    }

    /// Answers the server-first message with the client-final one.
    pub fn respond(&mut self, server_first: &str) -> Result<String, ScramError> {
        if let Some(e) = server_first.strip_prefix("e=") {
            return Err(ScramError::Server(e.to_string()));
        }
        let mut parts = server_first.split(',');
        let nonce = attribute(parts.next(), 'r')?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() || !valid_nonce(nonce)
        {
            return Err(ScramError::Malformed(
                "server nonce does not extend the client's",
            ));
        }
        let salt = B64
            .decode(attribute(parts.next(), 's')?)
            .map_err(|_| ScramError::Malformed("invalid salt"))?;
        let iterations: u32 = attribute(parts.next(), 'i')?
            .parse()
            .ok()
            .filter(|i| *i > 0 && *i <= MAX_ITERATIONS)
            .ok_or(ScramError::Malformed("invalid iteration count"))?;
        let (verifier, client_key) = match &self.credential {
            Credential::Password(pw) => Verifier::from_password(pw, &salt, iterations),
            Credential::Key(key, verifier) => {
                if verifier.salt != salt || verifier.iterations != iterations {
                    return Err(ScramError::StaleVerifier);
                }
                ((*verifier).clone(), key.0)
            }
        };
        let mut channel = self.gs2.as_bytes().to_vec();
        if let Some(hash) = &self.binding {
            channel.extend_from_slice(hash);
        }
        let without_proof = format!("c={},r={nonce}", B64.encode(channel));
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = hmac(&verifier.stored_key, auth_message.as_bytes());
        let mut proof = [0u8; 32];
        for (p, (k, s)) in proof
            .iter_mut()
            .zip(client_key.iter().zip(signature.iter()))
        {
            *p = k ^ s;
        }
        self.server_signature = Some(hmac(&verifier.server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final message.
    pub fn verify(&self, server_final: &str) -> Result<(), ScramError> {
        if let Some(e) = server_final.strip_prefix("e=") {
            return Err(ScramError::Server(e.to_string()));
        }
        let v = server_final
            .strip_prefix("v=")
            .and_then(|v| B64.decode(v.split(',').next().unwrap_or_default()).ok())
            .ok_or(ScramError::Malformed("invalid server-final message"))?;
        match &self.server_signature {
            Some(expected) if ct_eq(expected, &v) => Ok(()),
            _ => Err(ScramError::WrongServer),
        }
    }
}

/// MD5 password response from the inner hash (`md5(password || user)` in
/// hex, which is what PostgreSQL stores after `md5`) and the server's salt.
pub fn md5_response(inner_hex: &str, salt: &[u8]) -> String {
    let mut h = md5::Md5::new();
    h.update(inner_hex.as_bytes());
    h.update(salt);
    format!("md5{}", hex(&h.finalize()))
}

/// The stored MD5 inner hash of a password.
pub fn md5_inner(password: &[u8], user: &str) -> String {
    let mut h = md5::Md5::new();
    h.update(password);
    h.update(user.as_bytes());
    hex(&h.finalize())
}

/// Compares an MD5 password message with the expected response.
pub fn md5_matches(response: &str, expected: &str) -> bool {
    ct_eq(response.as_bytes(), expected.as_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A verifier as PostgreSQL 15 stores it for the password `pencil`
    /// (computed here from the RFC 7677 parameters).
    fn pencil() -> (Verifier, [u8; 32]) {
        Verifier::from_password(
            b"pencil",
            &B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(),
            4096,
        )
    }

    #[test]
    fn rfc7677_vector() {
        // RFC 7677 section 3: client and server nonces fixed.
        let (v, client_key) = pencil();
        let bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let without = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let auth = format!("{bare},{server_first},{without}");
        let sig = hmac(&v.stored_key, auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
        assert_eq!(
            B64.encode(proof),
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert_eq!(
            B64.encode(hmac(&v.server_key, auth.as_bytes())),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn parses_stored_secrets() {
        let (v, _) = pencil();
        let stored = format!(
            "SCRAM-SHA-256$4096:{}${}:{}",
            B64.encode(&v.salt),
            B64.encode(v.stored_key),
            B64.encode(v.server_key)
        );
        assert!(matches!(Secret::parse(&stored), Some(Secret::Scram(p)) if p == v));
        assert!(matches!(
            Secret::parse("md5d41d8cd98f00b204e9800998ecf8427e"),
            Some(Secret::Md5(_))
        ));
        for bad in [
            "",
            "plain",
            "md5xyz",
            "SCRAM-SHA-256$0:AA==$AA==:AA==",
            "SCRAM-SHA-256$x",
        ] {
            assert!(Secret::parse(bad).is_none(), "{bad}");
        }
    }

    /// pgveil's server side against its client side, as in a real login:
    /// the recovered key logs in again without the password.
    #[test]
    fn server_recovers_the_key_the_client_side_reuses() {
        for binding in [None, Some(vec![7u8; 32])] {
            let (v, _) = pencil();
            let offered: Vec<String> = match binding {
                Some(_) => vec![SCRAM_PLUS.into(), SCRAM.into()],
                None => vec![SCRAM.into()],
            };
            let mut client = ClientExchange::start(
                Credential::Password(b"pencil"),
                &offered,
                binding.clone(),
                false,
            )
            .unwrap();
            let (server, first) =
                ServerExchange::start(client.1, &client.2, binding.as_deref(), v.clone()).unwrap();
            let fin = client.0.respond(&first).unwrap();
            let (key, server_final) = server.finish(&fin).unwrap();
            client.0.verify(&server_final).unwrap();

            // Second hop: the key alone.
            let mut again =
                ClientExchange::start(Credential::Key(&key, &v), &offered, binding.clone(), false)
                    .unwrap();
            let (server, first) =
                ServerExchange::start(again.1, &again.2, binding.as_deref(), v.clone()).unwrap();
            let fin = again.0.respond(&first).unwrap();
            let (_, server_final) = server.finish(&fin).unwrap();
            again.0.verify(&server_final).unwrap();
        }
    }

    #[test]
    fn wrong_password_and_downgrades_are_refused() {
        let (v, _) = pencil();
        let offered = vec![SCRAM.to_string()];
        let mut client =
            ClientExchange::start(Credential::Password(b"pen"), &offered, None, false).unwrap();
        let (server, first) = ServerExchange::start(client.1, &client.2, None, v.clone()).unwrap();
        let fin = client.0.respond(&first).unwrap();
        assert_eq!(server.finish(&fin).err(), Some(ScramError::WrongProof));

        // "y" while pgveil offered PLUS: a stripped offer, refused.
        let hash = [1u8; 32];
        assert!(matches!(
            ServerExchange::start(SCRAM, "y,,n=,r=abc", Some(&hash), v.clone()),
            Err(ScramError::Binding(_))
        ));
        assert!(ServerExchange::start(SCRAM, "y,,n=,r=abc", None, v.clone()).is_ok());
        assert!(ServerExchange::start(SCRAM_PLUS, "n,,n=,r=abc", Some(&hash), v.clone()).is_err());
        assert!(ServerExchange::start(SCRAM, "n,a=admin,n=,r=abc", None, v.clone()).is_err());
        assert!(ServerExchange::start(SCRAM, "n,,n=,r=a,b", None, v.clone()).is_ok());
        assert!(ServerExchange::start(SCRAM, "garbage", None, v).is_err());
        // Stale verifier on the second hop.
        let other = Verifier::unmatchable("ghost").unwrap();
        assert_eq!(other.salt, Verifier::unmatchable("ghost").unwrap().salt);
        assert_ne!(other.salt, Verifier::unmatchable("ghost2").unwrap().salt);
        let key = ClientKey([0; 32]);
        // On TLS with no PLUS offered, the client says "y".
        let (_, _, first) =
            ClientExchange::start(Credential::Key(&key, &other), &offered, None, true).unwrap();
        assert!(first.starts_with("y,,"), "{first}");
        let mut c =
            ClientExchange::start(Credential::Key(&key, &other), &offered, None, false).unwrap();
        let server_first = format!("r={}x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", c.0.nonce);
        assert_eq!(
            c.0.respond(&server_first).err(),
            Some(ScramError::StaleVerifier)
        );
    }

    #[test]
    fn md5_matches_postgresql() {
        // SELECT 'md5' || md5('secret' || 'alice') in PostgreSQL.
        let inner = md5_inner(b"secret", "alice");
        assert_eq!(inner.len(), 32);
        let r = md5_response(&inner, &[1, 2, 3, 4]);
        assert!(r.starts_with("md5") && r.len() == 35);
        assert!(md5_matches(&r, &md5_response(&inner, &[1, 2, 3, 4])));
        assert!(!md5_matches(&r, &md5_response(&inner, &[1, 2, 3, 5])));
    }
}
