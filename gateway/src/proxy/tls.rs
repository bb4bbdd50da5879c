//! TLS for listeners: certificates from files or a self-signed one made on
//! first start and kept (so clients can pin it across restarts), ALPN for
//! HTTP/2 and HTTP/1.1, optional client-certificate verification (mTLS).
use std::{
    io::BufReader,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use tokio_rustls::TlsAcceptor;

use crate::{config::TlsConfig, private_files};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no {what} in PEM form")]
    Empty { path: PathBuf, what: &'static str },
    #[error("generating a self-signed certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA {path}: {message}")]
    ClientCa { path: PathBuf, message: String },
    #[error("{path}: not an X.509 certificate: {message}")]
    Parse { path: PathBuf, message: String },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut BufReader::new(bytes.as_slice()))
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    rustls_pemfile::private_key(&mut BufReader::new(bytes.as_slice()))
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::Empty {
            path: path.to_owned(),
            what: "private key",
        })
}

/// The self-signed certificate's file name in `state_dir`.
const SELF_SIGNED_CERT: &str = "self-signed.crt";

/// The self-signed pair in `dir`, made on first use and kept afterwards.
pub fn self_signed(dir: &Path, names: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_path = dir.join(SELF_SIGNED_CERT);
    let key_path = dir.join("self-signed.key");
    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Write { path, source }
    };
    if cert_path.is_file() && key_path.is_file() {
        private_files::restrict(&key_path).map_err(write_error(&key_path))?;
        return Ok((cert_path, key_path));
    }
    std::fs::create_dir_all(dir).map_err(write_error(dir))?;
    let generated = rcgen::generate_simple_self_signed(names.to_vec())?;
    write_private(&key_path, generated.signing_key.serialize_pem().as_bytes())
        .map_err(write_error(&key_path))?;
    std::fs::write(&cert_path, generated.cert.pem()).map_err(write_error(&cert_path))?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed certificate (kept for later starts)");
    Ok((cert_path, key_path))
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    private_files::open(path, &mut options)?.write_all(bytes)
}

/// An acceptor for one listener.
pub fn acceptor(
    tls: &TlsConfig,
    state_dir: &Path,
    names: &[String],
) -> Result<TlsAcceptor, TlsError> {
    let (cert_path, key_path) = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => self_signed(state_dir, names)?,
    };
    let builder =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca)? {
                roots.add(cert).map_err(|e| TlsError::ClientCa {
                    path: ca.clone(),
                    message: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::new(rustls::crypto::ring::default_provider()),
            )
            .build()
            .map_err(|e| TlsError::ClientCa {
                path: ca.clone(),
                message: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config =
        builder.with_single_cert(certificates(&cert_path)?, private_key(&key_path)?)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// When the certificate a listener serves ends (its leaf's `notAfter`, Unix
/// seconds): the configured one, else the self-signed one [`acceptor`] made.
pub fn expiry(tls: &TlsConfig, state_dir: &Path) -> Result<i64, TlsError> {
    let path = match (&tls.cert, &tls.key) {
        (Some(cert), Some(_)) => cert.clone(),
        _ => state_dir.join(SELF_SIGNED_CERT),
    };
    let leaf = certificates(&path)?.swap_remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).map_err(|e| TlsError::Parse {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok(cert.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_of_the_self_signed_certificate() {
        let dir = tempfile::tempdir().unwrap();
        self_signed(dir.path(), &["localhost".into()]).unwrap();
        let tls = TlsConfig::default();
        let expires = expiry(&tls, dir.path()).unwrap();
        // rcgen's default validity runs to 4096-01-01.
        assert_eq!(expires, 67_090_118_400);
        std::fs::write(dir.path().join(SELF_SIGNED_CERT), "not pem").unwrap();
        assert!(matches!(
            expiry(&tls, dir.path()),
            Err(TlsError::Empty { .. })
        ));
    }
}
