//! The `wss://` side: the certificate and key the worker cores serve, loaded from PEM files
//! at start and again on SIGHUP. A reload that fails (missing file, key not matching) keeps the
//! previous certificate, so a botched renewal never takes the node off the air. Links already
//! open keep their session; new connections get the new certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsFiles {
    pub fn load(cert: &Path, key: &Path) -> Result<TlsFiles, String> {
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
    pub fn reload(&self) -> Result<(), String> {
        let fresh = Arc::new(server_config(&self.cert, &self.key)?);
        *self.current.write().expect("tls lock") = fresh;
        Ok(())
    }
}

fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {}: no certificate in it",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
