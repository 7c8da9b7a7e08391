//! TLS on the listeners: a client that trusts the servers' authority looks
//! keys up over https; one that does not, or that speaks plain HTTP, gets
//! nothing; unusable certificate files are refused with their path.

mod common;

use common::{padded, spawn};

use std::path::{Path, PathBuf};

use morphogen_client::{Admin, Client, Settings, Trust};
use morphogen_scan::CpuEngine;
use morphogen_server::{Config, DEFAULT_TABLE, ServedTable, Server, TableInfo, TlsError, tls_config};
use morphogen_table::{BuildOptions, NoProgress, Table, build};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tempfile::TempDir;
use tokio::sync::oneshot;

const TOKEN: &str = "tls test admin token";

/// A certificate authority and a server certificate it signed for
/// 127.0.0.1, as PEM files in a temporary directory.
struct Certificates {
    dir: TempDir,
    ca_pem: String,
}

impl Certificates {
    fn new() -> Certificates {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
        let ca_pem = ca.as_ref().pem();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        Certificates { dir, ca_pem }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn trust(&self) -> Trust {
        Trust::from_pem_file(&self.path("ca.pem")).unwrap()
    }
}

fn table() -> Table {
    let records: Vec<(Vec<u8>, Vec<u8>)> =
        (0..300).map(|i| (format!("key-{i}").into_bytes(), format!("value-{i}").into_bytes())).collect();
    let options = BuildOptions { page_size: 512, value_size: Some(16), choices: 2, ..Default::default() };
    build(&records[..], &options, &NoProgress).unwrap()
}

/// A server with TLS from `certificates`; its https URL and its stopper.
async fn start(table: &Table, certificates: &Certificates) -> (String, oneshot::Sender<()>) {
    let tls = tls_config(&certificates.path("server.pem"), &certificates.path("server.key")).unwrap();
    let config = Config { tls: Some(tls), admin_token: Some(TOKEN.to_string()), ..Config::default() };
    let engine = Box::new(CpuEngine::new(table.clone()));
    let server = Server::new(vec![ServedTable::new(DEFAULT_TABLE, TableInfo::of(table), engine)], config);
    let (url, stop) = spawn(server.unwrap()).await;
    (url.replace("http://", "https://"), stop)
}

fn settings(trust: Trust) -> Settings {
    Settings { trust, ..Settings::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trusting_the_servers_authority_looks_keys_up_over_tls() {
    let table = table();
    let certificates = Certificates::new();
    let ((a, _stop_a), (b, _stop_b)) =
        (start(&table, &certificates).await, start(&table, &certificates).await);

    let client = Client::with_settings(&a, &b, &settings(certificates.trust())).await.unwrap();
    assert_eq!(client.get(b"key-7").await.unwrap(), Some(padded("value-7")));
    assert_eq!(client.get(b"key-300").await.unwrap(), None);
    // The admin routes are behind the same TLS.
    let admin = Admin::new(&a, TOKEN, &settings(certificates.trust())).unwrap();
    assert_eq!(admin.status().await.unwrap().meta.records, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_certificate_or_speaks_plain_http_gets_nothing() {
    let table = table();
    let certificates = Certificates::new();
    let ((a, _stop_a), (b, _stop_b)) =
        (start(&table, &certificates).await, start(&table, &certificates).await);

    // The system's roots do not include the test authority.
    let error = Client::with_settings(&a, &b, &settings(Trust::System)).await.unwrap_err();
    assert!(error.to_string().contains("certificate"), "{error}");
    // Nor does another authority, even one for the same address.
    let other = Certificates::new();
    let error = Client::with_settings(&a, &b, &settings(other.trust())).await.unwrap_err();
    assert!(error.to_string().contains("certificate"), "{error}");
    // Plain HTTP to a TLS listener: no answer.
    let plain = a.replace("https://", "http://");
    assert!(Client::with_settings(&plain, &plain, &Settings::default()).await.is_err());

    // None of that harmed the server.
    let client = Client::with_settings(&a, &b, &settings(certificates.trust())).await.unwrap();
    assert_eq!(client.get(b"key-8").await.unwrap(), Some(padded("value-8")));
    let metrics = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(certificates.ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap()
        .get(format!("{a}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("morphogen_tls_handshake_failures_total"), "{metrics}");
}

#[test]
fn unusable_certificate_files_are_refused_with_their_path() {
    let certificates = Certificates::new();
    let other = Certificates::new();
    let empty = certificates.path("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let missing = certificates.path("missing.pem");
    let (cert, key) = (certificates.path("server.pem"), certificates.path("server.key"));

    let refused = |certificate: &Path, key: &Path| tls_config(certificate, key).unwrap_err();
    assert!(
        matches!(refused(&missing, &key), TlsError::Certificate { ref path, .. } if path.contains("missing.pem"))
    );
    assert!(
        matches!(refused(&empty, &key), TlsError::Certificate { ref path, .. } if path.contains("empty.pem"))
    );
    // A certificate file given as the key: it holds no private key.
    assert!(matches!(refused(&cert, &cert), TlsError::Key { ref path, .. } if path.contains("server.pem")));
    // Another certificate's key.
    assert!(matches!(refused(&cert, &other.path("server.key")), TlsError::Config(_)));
    assert!(tls_config(&cert, &key).is_ok());
    // The client refuses a CA file without certificates.
    assert!(Trust::from_pem_file(&empty).is_err());
}
