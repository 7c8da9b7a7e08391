//! `morphogen cert`: a private certificate authority and the servers'
//! certificates it signs, for TLS without a public authority.
//!
//! A certificate made with `openssl req -x509` is marked as an authority,
//! and a client refuses an authority as a server's own certificate; this
//! command makes the two kinds apart: the authority (given to clients with
//! `--ca`) and one end-entity certificate per server.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, date_time_ymd,
};

#[derive(Args)]
pub struct CertArgs {
    /// Directory to write into (created if missing). It gets `ca.pem`, the
    /// authority's certificate for the clients' `--ca`, and for each server
    /// `NAME.pem` and `NAME.key` for its `--tls-cert` and `--tls-key`.
    /// Existing files are never overwritten.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// One server: its DNS names and IP addresses, comma-separated, as
    /// clients will reach it (`pir-a.example.org,10.0.0.5`). The first
    /// names its files. Give one --server per server.
    #[arg(long = "server", value_name = "NAMES", required = true)]
    servers: Vec<String>,
    /// Years the certificates are valid for, to the start of a year.
    #[arg(long, value_name = "YEARS", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=20))]
    years: u16,
}

pub fn run(args: &CertArgs) -> anyhow::Result<()> {
    let servers = args.servers.iter().map(|names| parse_names(names)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut first_names = std::collections::BTreeSet::new();
    if let Some(twice) = servers.iter().map(|names| &names[0]).find(|name| !first_names.insert(*name)) {
        bail!("two --server entries are named {twice:?} first: each names its files and needs its own");
    }
    let files: Vec<PathBuf> = std::iter::once(args.dir.join("ca.pem"))
        .chain(servers.iter().flat_map(|names| {
            [args.dir.join(format!("{}.pem", names[0])), args.dir.join(format!("{}.key", names[0]))]
        }))
        .collect();
    // Checked before anything is written: nothing is half made or lost.
    if let Some(existing) = files.iter().find(|path| path.exists()) {
        bail!("{} exists already; choose another --dir or move it away", existing.display());
    }
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;

    let (year, years) = (this_year(), i32::from(args.years));
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, "morphogen private authority");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = date_time_ymd(year - 1, 12, 1);
    ca.not_after = date_time_ymd(year + years, 1, 1);
    // The authority's key is not kept: it signs these certificates and no
    // others. Run the command again for a new set.
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    write_new(&args.dir.join("ca.pem"), ca.as_ref().pem().as_bytes(), false)?;
    for names in &servers {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, names[0].clone());
        params.subject_alt_names = names.iter().map(|name| san(name)).collect::<anyhow::Result<_>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = date_time_ymd(year - 1, 12, 1);
        params.not_after = date_time_ymd(year + years, 1, 1);
        let certificate = params.signed_by(&key, &ca)?;
        write_new(&args.dir.join(format!("{}.pem", names[0])), certificate.pem().as_bytes(), false)?;
        write_new(&args.dir.join(format!("{}.key", names[0])), key.serialize_pem().as_bytes(), true)?;
    }
    let mut text = format!("wrote {} (give it to clients: --ca)\n", args.dir.join("ca.pem").display());
    for names in &servers {
        let (pem, key) =
            (args.dir.join(format!("{}.pem", names[0])), args.dir.join(format!("{}.key", names[0])));
        text += &format!(
            "{}: serve --tls-cert {} --tls-key {}\n",
            names.join(", "),
            pem.display(),
            key.display()
        );
    }
    crate::print_stdout(&text)
}

/// A server's names: non-empty, each a DNS name or an IP address, the
/// first one usable as a file name.
fn parse_names(list: &str) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = list.split(',').map(|name| name.trim().to_string()).collect();
    if names.iter().any(String::is_empty) {
        bail!("--server {list:?}: an empty name");
    }
    let first = &names[0];
    if !first.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_')) {
        bail!("--server {list:?}: {first:?} cannot name a file");
    }
    for name in &names {
        san(name).with_context(|| format!("--server {list:?}"))?;
    }
    Ok(names)
}

fn san(name: &str) -> anyhow::Result<SanType> {
    Ok(match name.parse::<IpAddr>() {
        Ok(address) => SanType::IpAddress(address),
        Err(_) => SanType::DnsName(
            name.to_string()
                .try_into()
                .map_err(|_| anyhow::anyhow!("{name:?} is neither a DNS name nor an IP"))?,
        ),
    })
}

/// Writes `bytes` to a new file at `path`; a key is readable by its owner only.
fn write_new(path: &Path, bytes: &[u8], secret: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes).with_context(|| format!("writing {}", path.display()))
}

/// The current year (UTC) by mean Gregorian years: a day off at most
/// around New Year, which a validity from December 1st of the year before
/// covers.
fn this_year() -> i32 {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    1970 + (seconds / 31_556_952) as i32
}
