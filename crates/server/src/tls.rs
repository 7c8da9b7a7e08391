//! TLS for the listeners: a certificate chain and its private key, read
//! from PEM files, served with rustls (TLS 1.2 and 1.3, HTTP/1.1).

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no certificate.
    #[error("the certificate file {path}: {message}")]
    Certificate {
        /// The file.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// The key file could not be read or holds no private key.
    #[error("the private key file {path}: {message}")]
    Key {
        /// The file.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// The key does not fit the certificate, or rustls refused them.
    #[error("the certificate and key: {0}")]
    Config(#[from] rustls::Error),
}

/// The TLS configuration of a server presenting the chain in `certificate`
/// (PEM, the server's certificate first) with the key in `key` (PEM:
/// PKCS#8, PKCS#1 or SEC1).
pub fn server_config(certificate: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = CertificateDer::pem_file_iter(certificate)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| TlsError::Certificate {
            path: certificate.display().to_string(),
            message: error.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate {
            path: certificate.display().to_string(),
            message: "holds no PEM certificate".to_string(),
        });
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|error| TlsError::Key {
        path: key.display().to_string(),
        // The error names the PEM section, never the key's bytes.
        message: error.to_string(),
    })?;
    let provider = tls_provider();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The process's rustls provider if the application installed one, and
/// rustls's default (aws-lc-rs) otherwise.
fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}
