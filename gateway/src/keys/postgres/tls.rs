//! TLS to the shared store by rustls on ring (the provider the rest of
//! the gateway uses; no process-wide default is installed). The server's
//! certificate is always verified, host name included: against the web
//! PKI roots, or against the CA file the URL names with libpq's
//! `sslrootcert=FILE` (a private CA, as most databases have). The driver
//! reads neither that nor libpq's `sslmode=verify-ca`/`verify-full`, so
//! they are translated here before it parses the URL.
use std::sync::Arc;

use tokio_postgres_rustls::MakeRustlsConnect;

use crate::keys::store::{BackendError, StoreError};

/// `url` as the driver takes it, and the CA file it names, if any.
pub(super) fn driver_url(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        if let Some(path) = pair.strip_prefix("sslrootcert=") {
            root_cert = form_urlencoded::parse(format!("f={path}").as_bytes())
                .next()
                .map(|(_, path)| path.into_owned());
        } else if matches!(pair, "sslmode=verify-full" | "sslmode=verify-ca") {
            // What `require` does here (the chain and the host name).
            kept.push("sslmode=require");
        } else {
            kept.push(pair);
        }
    }
    let url = match kept.is_empty() {
        true => base.to_owned(),
        false => format!("{base}?{}", kept.join("&")),
    };
    (url, root_cert)
}

/// The connector: trusting the CA file `root_cert`, else the web PKI.
pub(super) fn connector(root_cert: Option<&str>) -> Result<MakeRustlsConnect, StoreError> {
    let roots = match root_cert {
        None => rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
        Some(path) => trusted(path).map_err(|why| {
            StoreError::Backend(BackendError::new(format!("sslrootcert {path}: {why}")))
        })?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Backend(BackendError::new(e)))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The certificates of a PEM file, as trust anchors.
fn trusted(path: &str) -> Result<rustls::RootCertStore, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut bytes.as_slice()) {
        let cert = cert.map_err(|e| format!("not PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("not a CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(roots)
}

/// `error` and its causes in one line (the driver keeps why a handshake
/// failed in a source), saying what to do about a certificate this
/// gateway does not trust.
pub(super) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    for _ in 0..8 {
        let Some(cause) = source else { break };
        let part = cause.to_string();
        if !text.contains(&part) {
            text = format!("{text}: {part}");
        }
        source = cause.source();
    }
    hint(text)
}

fn hint(message: String) -> String {
    if message.contains("invalid peer certificate") {
        format!(
            "{message} (the database's certificate is not trusted: name its CA with \
             sslrootcert=FILE in store.url)"
        )
    } else {
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_tls_parameters_are_translated_for_the_driver() {
        assert_eq!(
            driver_url("postgres://gw@db/keys?sslmode=verify-full&sslrootcert=/etc/ca%20x.pem"),
            (
                "postgres://gw@db/keys?sslmode=require".to_owned(),
                Some("/etc/ca x.pem".to_owned())
            )
        );
        assert_eq!(
            driver_url("postgres://gw@db/keys?sslrootcert=ca.pem"),
            (
                "postgres://gw@db/keys".to_owned(),
                Some("ca.pem".to_owned())
            )
        );
        let plain = "postgresql:///keys?host=/run/pg&sslmode=require";
        assert_eq!(driver_url(plain), (plain.to_owned(), None));
    }

    #[test]
    fn a_bad_ca_file_is_refused_saying_why() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        for (path, why) in [(&missing, "No such file"), (&garbage, "no PEM certificate")] {
            let path = path.to_str().unwrap();
            let message = connector(Some(path)).err().unwrap().to_string();
            assert!(message.contains(path) && message.contains(why), "{message}");
        }
        assert!(connector(None).is_ok());
    }
}
