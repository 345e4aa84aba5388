//! The `wss://` side: the certificate and key the worker cores serve, loaded from PEM files
//! at start and again on SIGHUP. A reload that fails (missing file, key not matching) keeps the
//! previous certificate, so a botched renewal never takes the node off the air. Links already
//! open keep their session; new connections get the new certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the certificate or key cannot be served; each names the flag and file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert {}: {source}", path.display())]
    Cert { path: PathBuf, source: pem::Error },
    #[error("--tls-cert {}: no certificate in it", .0.display())]
    NoCert(PathBuf),
    #[error("--tls-key {}: {source}", path.display())]
    Key { path: PathBuf, source: pem::Error },
    /// rustls refused the pair (a key that does not match the certificate, an unsupported key).
    #[error("--tls-cert/--tls-key: {0}")]
    Refused(#[from] rustls::Error),
}

pub struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsFiles {
    pub fn load(cert: &Path, key: &Path) -> Result<TlsFiles, TlsError> {
        Ok(TlsFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(server_config(cert, key)?)),
        })
    }

    /// What a new connection's session is made from.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().expect("tls lock").clone()
    }

    /// Reads the files again; on error nothing changes.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(server_config(&self.cert, &self.key)?);
        *self.current.write().expect("tls lock") = fresh;
        Ok(())
    }
}

fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let bad_cert = |source| TlsError::Cert {
        path: cert.to_owned(),
        source,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(bad_cert)?
        .collect::<Result<_, _>>()
        .map_err(bad_cert)?;
    if chain.is_empty() {
        return Err(TlsError::NoCert(cert.to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.to_owned(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
