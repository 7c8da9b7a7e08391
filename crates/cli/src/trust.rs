//! `--ca`: which certificate authorities the client commands trust.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use morphogen_client::{Settings, Trust};

#[derive(Args)]
pub struct TrustArgs {
    /// For https servers, trust only the certificate authorities in this
    /// PEM file (a private CA, or the servers' self-signed certificates)
    /// instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
}

impl TrustArgs {
    /// Client settings with `timeout` and these authorities.
    pub fn settings(&self, timeout: Duration) -> anyhow::Result<Settings> {
        let trust = match &self.ca {
            Some(path) => Trust::from_pem_file(path).context("--ca")?,
            None => Trust::System,
        };
        Ok(Settings { timeout, trust, ..Settings::default() })
    }
}
