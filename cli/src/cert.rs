//! `cairn cert`: the cluster CA and the node and client certificates it signs, written as PEM
//! files (private keys with mode 0600), never overwriting an existing file.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use cairn_net::{ClusterCa, Issued, Role};
use clap::{Args, Subcommand};

use crate::Outcome;

/// `cairn cert ...`
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Create a cluster CA: DIR/ca.pem and DIR/ca.key. Refuses to replace an existing CA.
    Ca(CaArgs),
    /// Sign a node certificate: OUT/node.pem and OUT/node.key.
    Node(NodeCertArgs),
    /// Sign a client certificate: OUT/client.pem and OUT/client.key. Its role says what its
    /// holder may do: `data` (get, put, delete, ping, status, ring) or `admin` (also join,
    /// leave, remove and replace).
    Client(ClientCertArgs),
}

/// `cairn cert ca`
#[derive(Debug, Args)]
pub struct CaArgs {
    /// Directory to write ca.pem and ca.key into (created if missing).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The cluster's name, recorded in the CA certificate.
    #[arg(long, value_name = "CLUSTER", default_value = "cairn")]
    name: String,
}

/// `cairn cert node`
#[derive(Debug, Args)]
pub struct NodeCertArgs {
    /// Directory holding the CA (ca.pem, ca.key).
    #[arg(long, value_name = "DIR")]
    ca_dir: PathBuf,
    /// The node's name (as in its node.toml).
    #[arg(long)]
    name: String,
    /// Directory to write node.pem and node.key into (created if missing).
    #[arg(long, value_name = "OUTDIR")]
    out: PathBuf,
    /// Extra DNS name or IP address the certificate carries (repeatable). Loopback and
    /// `localhost` are always included.
    #[arg(long = "host", value_name = "H")]
    hosts: Vec<String>,
}

/// `cairn cert client`
#[derive(Debug, Args)]
pub struct ClientCertArgs {
    /// Directory holding the CA (ca.pem, ca.key).
    #[arg(long, value_name = "DIR")]
    ca_dir: PathBuf,
    /// The client's name, recorded in its certificate.
    #[arg(long)]
    name: String,
    /// Directory to write client.pem and client.key into (created if missing).
    #[arg(long, value_name = "OUTDIR")]
    out: PathBuf,
    /// What the holder may do: `data` reads and writes keys; `admin` also changes membership.
    #[arg(long, value_enum, default_value_t = ClientRole::Data)]
    role: ClientRole,
}

/// The roles a client certificate can have (node certificates come from `cairn cert node`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientRole {
    /// Get, put, delete, ping, status, ring.
    Data,
    /// What data may do, and layout changes (join, leave, remove, replace).
    Admin,
}

impl From<ClientRole> for Role {
    fn from(role: ClientRole) -> Role {
        match role {
            ClientRole::Data => Role::Data,
            ClientRole::Admin => Role::Admin,
        }
    }
}

/// Runs a `cert` subcommand.
pub fn run(cmd: CertCommand) -> anyhow::Result<Outcome> {
    match cmd {
        CertCommand::Ca(args) => {
            create_ca(&args.dir, &args.name)?;
            println!(
                "wrote {} and {}",
                ca_cert_path(&args.dir).display(),
                ca_key_path(&args.dir).display()
            );
        }
        CertCommand::Node(args) => {
            let ca = load_ca(&args.ca_dir)?;
            let issued = ca
                .issue_node(&args.name, &args.hosts)
                .with_context(|| format!("signing a certificate for node {:?}", args.name))?;
            let (cert, key) = write_issued(&args.out, "node", &issued)?;
            println!("wrote {} and {}", cert.display(), key.display());
        }
        CertCommand::Client(args) => {
            let ca = load_ca(&args.ca_dir)?;
            let role = Role::from(args.role);
            let issued = ca.issue_client_as(&args.name, role).with_context(|| {
                format!("signing a {role} certificate for client {:?}", args.name)
            })?;
            let (cert, key) = write_issued(&args.out, "client", &issued)?;
            println!(
                "wrote {} and {} (role {role})",
                cert.display(),
                key.display()
            );
        }
    }
    Ok(Outcome::Done)
}

/// The CA certificate in `dir`.
pub fn ca_cert_path(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

/// The CA key in `dir`.
pub fn ca_key_path(dir: &Path) -> PathBuf {
    dir.join("ca.key")
}

/// Creates a CA in `dir`, refusing if either of its files exists.
pub fn create_ca(dir: &Path, cluster: &str) -> anyhow::Result<ClusterCa> {
    let (cert, key) = (ca_cert_path(dir), ca_key_path(dir));
    for path in [&cert, &key] {
        if path.exists() {
            bail!(
                "{} already exists; refusing to replace the cluster CA (every certificate it signed would stop working). Remove it first, or choose another --dir",
                path.display()
            );
        }
    }
    let ca = ClusterCa::generate(cluster).context("creating the cluster CA")?;
    write_pair(dir, &cert, &key, ca.pem())?;
    Ok(ca)
}

/// Loads the CA in `dir`.
pub fn load_ca(dir: &Path) -> anyhow::Result<ClusterCa> {
    let (cert, key) = (ca_cert_path(dir), ca_key_path(dir));
    let read = |p: &Path| {
        std::fs::read_to_string(p).with_context(|| {
            format!(
                "cannot read {} (create a CA with `cairn cert ca --dir {}`)",
                p.display(),
                dir.display()
            )
        })
    };
    let (cert_pem, key_pem) = (read(&cert)?, read(&key)?);
    ClusterCa::from_pem(&cert_pem, &key_pem)
        .with_context(|| format!("loading the CA in {}", dir.display()))
}

/// Loads the CA in `dir`, creating it if neither file exists; one file without the other is an
/// error rather than a silent new CA.
pub fn load_or_create_ca(dir: &Path, cluster: &str) -> anyhow::Result<ClusterCa> {
    match (ca_cert_path(dir).exists(), ca_key_path(dir).exists()) {
        (true, true) => load_ca(dir),
        (false, false) => create_ca(dir, cluster),
        _ => bail!(
            "{} holds only one of ca.pem and ca.key; restore the missing file or remove the directory",
            dir.display()
        ),
    }
}

/// Writes `OUT/STEM.pem` and `OUT/STEM.key`, refusing to replace either; returns their paths.
pub fn write_issued(out: &Path, stem: &str, issued: &Issued) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cert = out.join(format!("{stem}.pem"));
    let key = out.join(format!("{stem}.key"));
    for path in [&cert, &key] {
        if path.exists() {
            bail!(
                "{} already exists; refusing to replace it (remove it first, or choose another --out)",
                path.display()
            );
        }
    }
    write_pair(out, &cert, &key, issued)?;
    Ok((cert, key))
}

fn write_pair(dir: &Path, cert: &Path, key: &Path, issued: &Issued) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // The key first: a certificate without its key is useless, a key without a certificate is
    // harmless and the next attempt says which file is in the way.
    write_new(key, &issued.key_pem, 0o600)?;
    write_new(cert, &issued.cert_pem, 0o644)
}

/// Creates `path` with `mode` (never replacing an existing file) and writes `text` durably.
fn write_new(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn ca_is_written_once_with_a_private_key() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path(), "t").unwrap();
        assert_eq!(mode(&ca_key_path(dir.path())), 0o600);
        let err = create_ca(dir.path(), "t").err().unwrap().to_string();
        assert!(err.contains("already exists"), "{err}");
        // The existing CA still loads and signs.
        let ca = load_ca(dir.path()).unwrap();
        let (cert, key) = write_issued(
            &dir.path().join("n1"),
            "node",
            &ca.issue_node("n1", &[]).unwrap(),
        )
        .unwrap();
        assert!(cert.ends_with("n1/node.pem"));
        assert_eq!(mode(&key), 0o600);
        assert!(write_issued(
            &dir.path().join("n1"),
            "node",
            &ca.issue_node("n1", &[]).unwrap()
        )
        .is_err());
    }

    #[test]
    fn half_a_ca_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path(), "t").unwrap();
        std::fs::remove_file(ca_key_path(dir.path())).unwrap();
        assert!(load_or_create_ca(dir.path(), "t").is_err());
    }
}
