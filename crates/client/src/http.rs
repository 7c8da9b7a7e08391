//! How the client reaches servers: time limits, and which certificates it
//! trusts for `https` URLs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls_platform_verifier::BuilderVerifierExt;

use crate::Error;

/// How long the servers' metadata is used before it is read again, unless
/// told otherwise: a second keeps a busy client from reading it on every
/// lookup, and an epoch lasts longer.
pub const DEFAULT_META_REFRESH: Duration = Duration::from_secs(1);

/// How long a lookup may take, retries included, unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How the client talks to servers.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Time limit of every lookup or admin request, retries included.
    pub timeout: Duration,
    /// The certificates `https` servers are checked against.
    pub trust: Trust,
    /// How long the servers' metadata (and so the epoch asked for) is used
    /// before a lookup reads it again; it is also read again whenever a
    /// server says the epoch or snapshot asked for is gone.
    pub meta_refresh: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { timeout: DEFAULT_TIMEOUT, trust: Trust::System, meta_refresh: DEFAULT_META_REFRESH }
    }
}

/// Which certificate authorities an `https` server's certificate must
/// chain to. The server's name is checked against its certificate either way.
#[derive(Clone, Debug, Default)]
pub enum Trust {
    /// The operating system's trusted roots.
    #[default]
    System,
    /// Only these authorities: a private CA, or the servers' self-signed
    /// certificates.
    Only(Vec<CertificateDer<'static>>),
}

impl Trust {
    /// Only the authorities in the PEM file at `path`.
    pub fn from_pem_file(path: &Path) -> Result<Trust, Error> {
        let unreadable = |message: String| Error::Setup(format!("the CA file {}: {message}", path.display()));
        let certificates = CertificateDer::pem_file_iter(path)
            .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
            .map_err(|error| unreadable(error.to_string()))?;
        if certificates.is_empty() {
            return Err(unreadable("holds no PEM certificate".to_string()));
        }
        Ok(Trust::Only(certificates))
    }

    /// The rustls configuration that checks servers against these authorities.
    fn tls_config(&self) -> Result<rustls::ClientConfig, Error> {
        let provider = tls_provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| Error::Setup(error.to_string()))?;
        let mut config = match self {
            Trust::System => {
                builder.with_platform_verifier().map_err(|error| Error::Setup(error.to_string()))?
            }
            Trust::Only(certificates) => {
                let mut roots = rustls::RootCertStore::empty();
                for certificate in certificates {
                    roots
                        .add(certificate.clone())
                        .map_err(|error| Error::Setup(format!("a CA certificate: {error}")))?;
                }
                builder.with_root_certificates(roots)
            }
        }
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// An HTTP client for `settings` that talks to `servers`. The system's
/// certificate authorities are loaded only if one of them is an `https`
/// URL: reading them takes a few milliseconds, a sizeable part of a
/// one-shot lookup against plain `http` servers, which need none. (A plain
/// `http` server that redirects to `https` then fails the certificate
/// check: give its `https` URL.)
pub(crate) fn http_client(settings: &Settings, servers: &[&Url]) -> Result<reqwest::Client, Error> {
    let tls = if servers.iter().any(|url| url.scheme() == "https") {
        settings.trust.tls_config()?
    } else {
        Trust::Only(Vec::new()).tls_config()?
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        // A redirect could send key shares or the admin token elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|error| Error::Setup(error.to_string()))
}

/// The process's rustls provider if the application installed one, and
/// rustls's default (aws-lc-rs) otherwise.
fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}
