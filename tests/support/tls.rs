//! TLS test support: certificates made with the OS `openssl` CLI, a
//! PostgreSQL cluster that accepts TCP clients only over TLS, and a
//! tokio-postgres TLS connector (rustls, aws-lc-rs) that verifies the
//! server and reports `tls-server-end-point` channel binding, so
//! tokio-postgres can use SCRAM-SHA-256-PLUS.
//!
//! The certificates are generated once per test binary into a temporary
//! directory removed when the process exits; nothing here is committed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use pgveil::tls::PgConnector;

use super::{PgCluster, TLS_APP_PASSWORD, TLS_AUTH_PASSWORD, find_pg_bin, is_root};

/// A certificate and its private key (PEM files).
#[derive(Debug, Clone)]
pub struct CertKey {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key (mode 0600).
    pub key: PathBuf,
}

/// The test PKI.
#[derive(Debug)]
pub struct Certs {
    /// Directory holding everything.
    pub dir: PathBuf,
    /// The test CA's certificate.
    pub ca: PathBuf,
    /// An unrelated CA's certificate (for "wrong CA" tests).
    pub other_ca: PathBuf,
    /// Server certificate (ECDSA P-256, signed with SHA-256, SAN
    /// `DNS:localhost`, `IP:127.0.0.1`); key in PKCS#8.
    pub server: CertKey,
    /// Server certificate (RSA 2048, signed with SHA-384, same names); key in
    /// PKCS#1 ("RSA PRIVATE KEY"). Its `tls-server-end-point` hash is SHA-384.
    pub server_rsa: CertKey,
    /// Client certificate, CN `postgres`, signed by the test CA; key in SEC1
    /// ("EC PRIVATE KEY").
    pub client: CertKey,
    /// Client certificate, CN `postgres`, signed by the unrelated CA.
    pub other_client: CertKey,
}

static CERTS: OnceLock<Certs> = OnceLock::new();

/// The test PKI, generated on first use.
pub fn certs() -> &'static Certs {
    CERTS.get_or_init(generate)
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl CLI runs");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `openssl req` configuration of a CA named `{cn}`.
fn ca_config(cn: &str) -> String {
    format!(
        "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = v3_ca\n\
         [dn]\nCN = {cn}\n\
         [v3_ca]\nbasicConstraints = critical,CA:TRUE\n\
         keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n"
    )
}
const REQ_CONFIG: &str = "[req]\ndistinguished_name = dn\n[dn]\n";
const SERVER_EXT: &str = "basicConstraints = critical,CA:FALSE\nextendedKeyUsage = serverAuth\n\
                          subjectAltName = DNS:localhost,IP:127.0.0.1\n\
                          subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n";
const CLIENT_EXT: &str = "basicConstraints = critical,CA:FALSE\nextendedKeyUsage = clientAuth\n\
                          subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n";

const EC: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
const RSA: &[&str] = &["-newkey", "rsa:2048"];

fn make_ca(dir: &Path, name: &str, cn: &str) {
    let cnf = format!("{name}.cnf");
    std::fs::write(dir.join(&cnf), ca_config(cn)).unwrap();
    let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
    let mut args = vec!["req", "-x509", "-new", "-config", &cnf, "-nodes", "-sha256"];
    args.extend_from_slice(EC);
    args.extend_from_slice(&["-keyout", &key, "-out", &crt, "-days", "3"]);
    openssl(dir, &args);
    chmod(&dir.join(key), 0o600);
}

/// A leaf certificate to make.
struct Leaf<'a> {
    /// File names `<name>.crt` and `<name>.key`.
    name: &'a str,
    /// Signing CA: `<ca>.crt` and `<ca>.key`.
    ca: &'a str,
    cn: &'a str,
    /// `openssl req` key options ([`EC`] or [`RSA`]).
    newkey: &'a [&'a str],
    /// Signature digest option, `-sha256` or `-sha384`.
    digest: &'a str,
    /// Extensions ([`SERVER_EXT`] or [`CLIENT_EXT`]).
    ext: &'a str,
    /// Key in the traditional format (PKCS#1 for RSA, SEC1 for EC) rather
    /// than PKCS#8.
    traditional: bool,
    serial: u32,
}

fn make_leaf(dir: &Path, leaf: &Leaf<'_>) -> CertKey {
    let name = leaf.name;
    let (key, csr, crt, extfile) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join("req.cnf"), REQ_CONFIG).unwrap();
    std::fs::write(dir.join(&extfile), leaf.ext).unwrap();
    let subj = format!("/CN={}", leaf.cn);
    let mut req = vec!["req", "-new", "-config", "req.cnf", "-nodes"];
    req.extend_from_slice(leaf.newkey);
    req.extend_from_slice(&["-keyout", &key, "-out", &csr, "-subj", &subj]);
    openssl(dir, &req);
    if leaf.traditional {
        let pkcs8 = format!("{name}.pkcs8.key");
        std::fs::rename(dir.join(&key), dir.join(&pkcs8)).unwrap();
        openssl(dir, &["pkey", "-in", &pkcs8, "-traditional", "-out", &key]);
        std::fs::remove_file(dir.join(&pkcs8)).unwrap();
    }
    let (ca_crt, ca_key, serial) = (
        format!("{}.crt", leaf.ca),
        format!("{}.key", leaf.ca),
        leaf.serial.to_string(),
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-set_serial",
            &serial,
            "-days",
            "3",
            leaf.digest,
            "-extfile",
            &extfile,
            "-out",
            &crt,
        ],
    );
    chmod(&dir.join(&key), 0o600);
    CertKey {
        cert: dir.join(crt),
        key: dir.join(key),
    }
}

fn generate() -> Certs {
    let dir = tempfile::Builder::new()
        .prefix("pgveil-certs-")
        .tempdir()
        .unwrap()
        .keep();
    super::remove_after_exit(&dir);
    // Traversable, so the server user can reach its own copies under pg/;
    // private keys stay 0600.
    chmod(&dir, 0o755);
    make_ca(&dir, "ca", "pgveil test CA");
    make_ca(&dir, "other-ca", "unrelated test CA");
    let server = Leaf {
        name: "server",
        ca: "ca",
        cn: "localhost",
        newkey: EC,
        digest: "-sha256",
        ext: SERVER_EXT,
        traditional: false,
        serial: 1,
    };
    let server_rsa = Leaf {
        name: "server-rsa",
        newkey: RSA,
        digest: "-sha384",
        traditional: true,
        serial: 2,
        ..server
    };
    let client = Leaf {
        name: "client",
        cn: "postgres",
        ext: CLIENT_EXT,
        traditional: true,
        serial: 3,
        ..server
    };
    let other_client = Leaf {
        name: "other-client",
        ca: "other-ca",
        traditional: false,
        serial: 4,
        ..client
    };
    Certs {
        ca: dir.join("ca.crt"),
        other_ca: dir.join("other-ca.crt"),
        server: make_leaf(&dir, &server),
        server_rsa: make_leaf(&dir, &server_rsa),
        client: make_leaf(&dir, &client),
        other_client: make_leaf(&dir, &other_client),
        dir,
    }
}

/// A copy of `pair` the PostgreSQL server user may use as `ssl_cert_file`
/// and `ssl_key_file` (owned by it, key 0600), in its own directory.
pub fn server_copy(pair: &CertKey) -> CertKey {
    let dir = certs().dir.join("pg");
    std::fs::create_dir_all(&dir).unwrap();
    let copy = CertKey {
        cert: dir.join(pair.cert.file_name().unwrap()),
        key: dir.join(pair.key.file_name().unwrap()),
    };
    std::fs::copy(&pair.cert, &copy.cert).unwrap();
    std::fs::copy(&pair.key, &copy.key).unwrap();
    chmod(&copy.key, 0o600);
    if is_root() {
        let out = Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "chown postgres {}", dir.display());
    }
    copy
}

/// `pg_hba.conf` of the TLS cluster: trust over the Unix socket (set-up
/// only), SCRAM over TLS, and no entry for plaintext TCP.
pub const TLS_ONLY_HBA: &str = "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n";

/// Roles and objects of the TLS cluster: `app` (the application's role,
/// not superuser), `pgveil_auth` with a SECURITY DEFINER lookup function
/// (what `[auth] mode = "scram"` needs), and a table for an encrypted
/// column.
pub fn tls_setup_sql() -> String {
    format!(
        "CREATE ROLE app LOGIN PASSWORD '{TLS_APP_PASSWORD}';
         CREATE ROLE pgveil_auth LOGIN PASSWORD '{TLS_AUTH_PASSWORD}';
         CREATE SCHEMA pgveil_auth AUTHORIZATION postgres;
         CREATE FUNCTION pgveil_auth.lookup(i_username text, OUT usename name, OUT passwd text)
           RETURNS record LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS
           $$ SELECT rolname, rolpassword FROM pg_authid
              WHERE rolname = i_username AND rolcanlogin AND NOT rolsuper $$;
         REVOKE ALL ON FUNCTION pgveil_auth.lookup(text) FROM PUBLIC;
         GRANT USAGE ON SCHEMA pgveil_auth TO pgveil_auth;
         GRANT EXECUTE ON FUNCTION pgveil_auth.lookup(text) TO pgveil_auth;
         CREATE TABLE public.tls_contacts (id int PRIMARY KEY, email bytea);
         GRANT ALL ON public.tls_contacts TO app;"
    )
}

static TLS_CLUSTER: OnceLock<PgCluster> = OnceLock::new();

/// A cluster of this test binary with `ssl = on` (certificate
/// [`Certs::server_rsa`], so its channel binding hash is SHA-384) whose
/// `pg_hba.conf` is [`TLS_ONLY_HBA`]: plaintext TCP is refused. Set up with
/// [`tls_setup_sql`]'s roles.
pub fn tls_cluster() -> &'static PgCluster {
    TLS_CLUSTER.get_or_init(|| {
        let pair = server_copy(&certs().server_rsa);
        let (cert, key) = (
            pair.cert.display().to_string(),
            pair.key.display().to_string(),
        );
        let pg = PgCluster::start_with_hba(
            &find_pg_bin(),
            "scram-sha-256",
            &[
                ("ssl", "on"),
                ("ssl_cert_file", &cert),
                ("ssl_key_file", &key),
            ],
            Some(TLS_ONLY_HBA),
        );
        pg.psql_socket(&tls_setup_sql());
        pg
    })
}

impl PgCluster {
    /// Runs `sql` as the superuser over the Unix socket with psql (stops on
    /// the first error).
    pub fn psql_socket(&self, sql: &str) -> String {
        let psql = self.bin.join("psql");
        let program = if psql.exists() {
            psql
        } else {
            PathBuf::from("psql")
        };
        let out = Command::new(program)
            .arg("-X")
            .args(["-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(&self.dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", "postgres", "-c", sql])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql over the socket: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A tokio-postgres client as superuser over the Unix socket (trust).
    pub async fn connect_socket(&self) -> tokio_postgres::Client {
        super::connect(&format!(
            "host={} port={} user=postgres dbname=postgres",
            self.dir.display(),
            self.port
        ))
        .await
    }
}

/// tokio-postgres TLS for the tests: pgveil's own connector
/// (`pgveil::tls::PgConnector`: CA and host name verified, ALPN
/// `postgresql`, `tls-server-end-point` channel binding).
pub struct TestTls;

#[allow(clippy::new_ret_no_self)]
impl TestTls {
    /// Trusts only the CA certificates in the PEM file `ca`.
    pub fn new(ca: &Path) -> PgConnector {
        PgConnector::new(Some(ca), None).unwrap()
    }

    /// Like [`TestTls::new`], presenting `client` as client certificate.
    pub fn with_client_cert(ca: &Path, client: &CertKey) -> PgConnector {
        PgConnector::new(Some(ca), Some((&client.cert, &client.key))).unwrap()
    }
}

/// RFC 5929 `tls-server-end-point`: the certificate hashed with its
/// signature's hash function, SHA-256 when that is MD5 or SHA-1 (or
/// unknown here).
pub fn tls_server_end_point(cert_der: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    // ecdsa-with-SHA384, sha384WithRSAEncryption; ecdsa-with-SHA512,
    // sha512WithRSAEncryption (DER contents of the OIDs).
    const SHA384: &[&[u8]] = &[
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
    ];
    const SHA512: &[&[u8]] = &[
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
    ];
    match signature_algorithm(cert_der) {
        Some(oid) if SHA384.contains(&oid) => sha2::Sha384::digest(cert_der).to_vec(),
        Some(oid) if SHA512.contains(&oid) => sha2::Sha512::digest(cert_der).to_vec(),
        _ => sha2::Sha256::digest(cert_der).to_vec(),
    }
}

/// One DER element: (tag, contents, what follows).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(n)?;
        (
            bytes.iter().fold(0usize, |a, &b| (a << 8) | usize::from(b)),
            rest,
        )
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

/// The OID contents of a certificate's `signatureAlgorithm`.
fn signature_algorithm(cert_der: &[u8]) -> Option<&[u8]> {
    let (_, certificate, _) = der(cert_der)?;
    let (_, _tbs, rest) = der(certificate)?;
    let (_, algorithm, _) = der(rest)?;
    let (tag, oid, _) = der(algorithm)?;
    (tag == 0x06).then_some(oid)
}

/// The venv python with psycopg 3, installed by `tests/clients/install.sh`
/// once per process, as `tests/clients.rs` does: a driver that cannot be
/// installed fails the test, never skips it.
pub fn psycopg_python() -> &'static PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        super::run_checked(
            Command::new(repo.join("tests/clients/install.sh")),
            "tests/clients/install.sh (the suite does not skip drivers)",
        );
        repo.join("target/clients/venv/bin/python")
    })
}
