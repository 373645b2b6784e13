//! A throw-away PKI for TLS tests: a CA, a server certificate for localhost and 127.0.0.1, and
//! client certificates on demand, as PEM files in a temporary directory.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

pub struct Pki {
    pub dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    /// Writes `ca.pem`, `tls.pem` and `tls.key` (the server's) into a new directory.
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(crate::unique_name("strait-pki"));
        std::fs::create_dir_all(&dir).expect("a PKI directory");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Strait test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("a key"))
            .expect("a CA");
        let pki = Self { dir, ca };
        std::fs::write(pki.dir.join("ca.pem"), pki.ca.pem()).expect("writing ca.pem");
        pki.leaf(
            "tls",
            &["localhost", "127.0.0.1"],
            "strait test server",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        pki
    }

    /// The path of one of the PEM files.
    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// The contents of one of the PEM files.
    pub fn pem(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).expect("a PEM file")
    }

    /// A client certificate with common name `name`: `(certificate, key)` PEM, also written as
    /// `<name>.pem` and `<name>.key`.
    pub fn client(&self, name: &str) -> (String, String) {
        self.leaf(name, &[], name, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(
        &self,
        file: &str,
        names: &[&str],
        common_name: &str,
        usage: ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let key = KeyPair::generate().expect("a key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.ca)
            .expect("a leaf certificate");
        let (cert, key) = (cert.pem(), key.serialize_pem());
        std::fs::write(self.dir.join(format!("{file}.pem")), &cert).expect("writing a cert");
        std::fs::write(self.dir.join(format!("{file}.key")), &key).expect("writing a key");
        (cert, key)
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}
