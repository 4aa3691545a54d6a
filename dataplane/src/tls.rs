//! Certificates: loaded from PEM files and swapped when the files change,
//! or generated as a development CA plus leaf when none are configured.
//! One resolver serves both the TCP (h1/h2) and QUIC (h3) listeners.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use arc_swap::ArcSwap;
use rustls::{
    crypto::ring::sign::any_supported_type,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("generating a development certificate: {0}")]
    Generate(String),
}

/// Cert and key files to watch, with the modification times last loaded.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that signed a generated development certificate.
    pub dev_ca: Option<PathBuf>,
    stamp: Option<(SystemTime, SystemTime)>,
}

pub struct Resolver(ArcSwap<CertifiedKey>);

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

impl Resolver {
    pub fn load(files: &mut CertFiles) -> Result<Arc<Resolver>, TlsError> {
        let key = load_key(files)?;
        Ok(Arc::new(Resolver(ArcSwap::from_pointee(key))))
    }

    /// Reloads when either file changed since the last load. A broken new
    /// pair is reported and the previous certificate stays in service.
    pub fn reload_if_changed(&self, files: &mut CertFiles) -> Result<bool, TlsError> {
        let now = stamps(files);
        if now.is_none() || now == files.stamp {
            return Ok(false);
        }
        let key = load_key(files)?;
        self.0.store(Arc::new(key));
        Ok(true)
    }
}

fn stamps(files: &CertFiles) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(&files.cert)?, m(&files.key)?))
}

/// The certificates of a PEM file (a chain, or CA roots); at least one.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |reason: String| TlsError::File {
        path: path.to_owned(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err("no CERTIFICATE in file".into()));
    }
    Ok(certs)
}

fn load_key(files: &mut CertFiles) -> Result<CertifiedKey, TlsError> {
    let stamp = stamps(files);
    let file_err = |path: &Path, reason: String| TlsError::File {
        path: path.to_owned(),
        reason,
    };
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| file_err(&files.key, e.to_string()))?;
    let signer = any_supported_type(&key).map_err(|e| file_err(&files.key, e.to_string()))?;
    let ck = CertifiedKey::new(certs, signer);
    ck.keys_match().map_err(|e| {
        file_err(
            &files.cert,
            format!("certificate and key do not match: {e}"),
        )
    })?;
    files.stamp = stamp;
    Ok(ck)
}

impl CertFiles {
    pub fn given(cert: PathBuf, key: PathBuf) -> Self {
        CertFiles {
            cert,
            key,
            dev_ca: None,
            stamp: None,
        }
    }

    /// Reuses or creates `dir/{ca,cert,key}.pem`: a development CA (clients
    /// trust `ca.pem`) and a leaf for localhost and 127.0.0.1 signed by it.
    pub fn development(dir: &Path) -> Result<Self, TlsError> {
        let (ca, cert, key) = (
            dir.join("ca.pem"),
            dir.join("cert.pem"),
            dir.join("key.pem"),
        );
        if !(ca.exists() && cert.exists() && key.exists()) {
            generate_dev(dir, &ca, &cert, &key)?;
        }
        Ok(CertFiles {
            cert,
            key,
            dev_ca: Some(ca),
            stamp: None,
        })
    }
}

fn generate_dev(
    dir: &Path,
    ca_path: &Path,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let g = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(g)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "STOA development CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(g)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(g)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])
    .map_err(g)?;
    leaf.distinguished_name
        .push(DnType::CommonName, "stoa-gateway (development)");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let leaf_key = KeyPair::generate().map_err(g)?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(g)?;

    let io = |p: &Path, e: std::io::Error| TlsError::File {
        path: p.to_owned(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    std::fs::write(key_path, leaf_key.serialize_pem()).map_err(|e| io(key_path, e))?;
    std::fs::write(cert_path, leaf_cert.pem()).map_err(|e| io(cert_path, e))?;
    std::fs::write(ca_path, ca_cert.pem()).map_err(|e| io(ca_path, e))?;
    Ok(())
}

/// rustls configs for TCP (ALPN h2, http/1.1) and QUIC (ALPN h3).
pub fn server_configs(
    resolver: Arc<Resolver>,
) -> (Arc<rustls::ServerConfig>, Arc<rustls::ServerConfig>) {
    let make = |alpn: Vec<Vec<u8>>| {
        let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
        c.alpn_protocols = alpn;
        c.max_early_data_size = 0;
        Arc::new(c)
    };
    let tcp = make(vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    let mut quic = rustls::ServerConfig::clone(&make(vec![b"h3".to_vec()]));
    quic.max_early_data_size = u32::MAX;
    (tcp, Arc::new(quic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_certificates_are_made_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("stoa-tls-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut files = CertFiles::development(&dir).unwrap();
        let first = std::fs::read(&files.cert).unwrap();
        let resolver = Resolver::load(&mut files).unwrap();
        assert!(
            !resolver.reload_if_changed(&mut files).unwrap(),
            "unchanged files are not reloaded"
        );
        let again = CertFiles::development(&dir).unwrap();
        assert_eq!(std::fs::read(&again.cert).unwrap(), first);
        assert!(
            std::fs::read_to_string(files.dev_ca.unwrap())
                .unwrap()
                .contains("BEGIN CERTIFICATE")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn broken_files_are_reported() {
        let dir = std::env::temp_dir().join(format!("stoa-tls-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("c.pem"), "nope").unwrap();
        std::fs::write(dir.join("k.pem"), "nope").unwrap();
        let mut files = CertFiles::given(dir.join("c.pem"), dir.join("k.pem"));
        let err = Resolver::load(&mut files).unwrap_err().to_string();
        assert!(err.contains("c.pem"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
