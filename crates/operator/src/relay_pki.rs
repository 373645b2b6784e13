//! The relay link's PKI. Every MqttBridge gets a CA of its own, kept in a Secret the bridge owns
//! (as Strimzi keeps a cluster CA), which issues s-proxy a server certificate and r-proxy a client
//! certificate. s-proxy then accepts relay streams only from holders of this bridge's client
//! certificate, so no other pod in the cluster can open sessions under any client id it likes.
//!
//! Certificates are renewed a third of their life before they expire; the proxies read renewed
//! files on their next handshake (strait_tls::Reloading), so renewal drops no session.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use sha2::{Digest, Sha256};

use crate::context::ReconcileError;
use crate::workload::Owner;

const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const LEAF_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// On a leaf Secret: what it was issued for (CA, role, names); a change means a new certificate.
const ISSUED_FOR: &str = "strait.dev/issued-for";

pub const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";

/// Which end of the link a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// s-proxy: a server certificate for its Service's DNS names.
    Server,
    /// r-proxy: a client certificate.
    Client,
}

/// The bridge's CA: its certificate and key, PEM.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
    subject: DistinguishedName,
}

/// A certificate and key, PEM, with the CA certificate that issued it.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot make a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

fn ca_subject(name: &str) -> DistinguishedName {
    let mut subject = DistinguishedName::new();
    subject.push(DnType::OrganizationName, "strait.dev");
    subject.push(DnType::CommonName, format!("{name} relay CA"));
    subject
}

fn validity(params: &mut CertificateParams, now: SystemTime, life: Duration) {
    // A minute back: clocks of the pods may lag the operator's a little.
    params.not_before = (now - Duration::from_secs(60)).into();
    params.not_after = (now + life).into();
}

impl Ca {
    /// A new CA for `name` (the `namespace/bridge` it serves).
    pub fn generate(name: &str, now: SystemTime) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let subject = ca_subject(name);
        let mut params = CertificateParams::default();
        params.distinguished_name = subject.clone();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, now, CA_VALIDITY);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
            subject,
        })
    }

    /// The CA kept in `secret`, unless it is unreadable or due for renewal.
    pub fn from_secret(name: &str, secret: &Secret, now: SystemTime) -> Option<Self> {
        let data = secret.data.as_ref()?;
        let cert_pem = String::from_utf8(data.get(CA_CERT)?.0.clone()).ok()?;
        let key = KeyPair::from_pem(std::str::from_utf8(&data.get(CA_KEY)?.0).ok()?).ok()?;
        if renew_at(&cert_pem)? <= now {
            return None;
        }
        Some(Self {
            cert_pem,
            key,
            subject: ca_subject(name),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    fn secret_data(&self) -> BTreeMap<String, ByteString> {
        BTreeMap::from([
            (
                CA_CERT.into(),
                ByteString(self.cert_pem.clone().into_bytes()),
            ),
            (
                CA_KEY.into(),
                ByteString(self.key.serialize_pem().into_bytes()),
            ),
        ])
    }

    /// A certificate for one end of the link. `names` are the DNS names of a server; a client
    /// certificate carries `names[0]` as its common name.
    pub fn issue(&self, role: Role, names: &[String], now: SystemTime) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = match role {
            Role::Server => CertificateParams::new(names.to_vec())?,
            Role::Client => CertificateParams::default(),
        };
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![match role {
            Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Role::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, now, LEAF_VALIDITY);
        let mut issuer_params = CertificateParams::default();
        issuer_params.distinguished_name = self.subject.clone();
        issuer_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = Issuer::from_params(&issuer_params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: self.cert_pem.clone(),
        })
    }
}

/// When a certificate is due for renewal: a third of its life before it ends (30 days for a
/// leaf, about 3 years for the CA); `None` when it cannot be read.
pub fn renew_at(cert_pem: &str) -> Option<SystemTime> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let at = |t: i64| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t).ok()?));
    let validity = cert.validity();
    let (start, end) = (
        at(validity.not_before.timestamp())?,
        at(validity.not_after.timestamp())?,
    );
    Some(end - end.duration_since(start).ok()? / 3)
}

fn issued_for(ca_pem: &str, role: Role, names: &[String]) -> String {
    let digest = Sha256::digest(format!("{ca_pem}\n{role:?}\n{}", names.join(",")));
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// The Secret names of one bridge's link PKI.
pub fn ca_secret_name(bridge: &str) -> String {
    format!("{bridge}-relay-ca")
}

pub fn leaf_secret_name(bridge: &str, role: &str) -> String {
    format!("{bridge}-{role}-link-tls")
}

/// All three, with what they hold (for the controller's Secret watch).
pub fn secret_names(bridge: &str) -> [(String, String); 3] {
    [
        (ca_secret_name(bridge), "relay link CA".into()),
        (
            leaf_secret_name(bridge, "s-proxy"),
            "s-proxy's link certificate".into(),
        ),
        (
            leaf_secret_name(bridge, "r-proxy"),
            "r-proxy's link certificate".into(),
        ),
    ]
}

/// Makes sure the CA and both certificates exist, are current and were issued for `names`;
/// returns how long until the next renewal is due.
pub async fn ensure(
    secrets: &Api<Secret>,
    owner: &Owner,
    server_names: &[String],
    client_name: &str,
) -> Result<Duration, ReconcileError> {
    let now = SystemTime::now();
    let instance = &owner.instance;
    let ca_name = ca_secret_name(instance);
    let existing = get_owned(secrets, &ca_name, owner).await?;
    let scope = format!(
        "{}/{instance}",
        owner.namespace.as_deref().unwrap_or_default()
    );
    let ca = match existing
        .as_ref()
        .and_then(|secret| Ca::from_secret(&scope, secret, now))
    {
        Some(ca) => ca,
        None => {
            let ca = Ca::generate(&scope, now)?;
            tracing::info!(secret = %ca_name, "issued a new relay link CA");
            put(secrets, owner, &ca_name, "Opaque", ca.secret_data(), None).await?;
            ca
        }
    };
    let mut next = renew_at(ca.cert_pem()).unwrap_or(now);
    let client_names = [client_name.to_string()];
    for (role_name, role, names) in [
        ("s-proxy", Role::Server, server_names),
        ("r-proxy", Role::Client, &client_names[..]),
    ] {
        let name = leaf_secret_name(instance, role_name);
        let wanted = issued_for(ca.cert_pem(), role, names);
        let current = get_owned(secrets, &name, owner).await?.and_then(|secret| {
            let issued_for = secret.annotations().get(ISSUED_FOR)?;
            let cert = secret.data.as_ref()?.get("tls.crt")?;
            let due = renew_at(std::str::from_utf8(&cert.0).ok()?)?;
            (*issued_for == wanted && due > now).then_some(due)
        });
        let due = match current {
            Some(due) => due,
            None => {
                let issued = ca.issue(role, names, now)?;
                tracing::info!(secret = %name, role = role_name, "issued a relay link certificate");
                let data = BTreeMap::from([
                    (
                        "tls.crt".into(),
                        ByteString(issued.cert_pem.clone().into_bytes()),
                    ),
                    ("tls.key".into(), ByteString(issued.key_pem.into_bytes())),
                    (CA_CERT.into(), ByteString(issued.ca_pem.into_bytes())),
                ]);
                put(
                    secrets,
                    owner,
                    &name,
                    "kubernetes.io/tls",
                    data,
                    Some(wanted),
                )
                .await?;
                renew_at(&issued.cert_pem).unwrap_or(now)
            }
        };
        next = next.min(due);
    }
    Ok(next.duration_since(now).unwrap_or_default())
}

/// The Secret `name`, if it exists; an error when it exists but is not this owner's (the
/// operator never takes over an object it did not make).
async fn get_owned(
    secrets: &Api<Secret>,
    name: &str,
    owner: &Owner,
) -> Result<Option<Secret>, ReconcileError> {
    let Some(secret) = secrets.get_opt(name).await? else {
        return Ok(None);
    };
    crate::workload::check_owned(&secret.metadata, owner, "Secret")?;
    Ok(Some(secret))
}

async fn put(
    secrets: &Api<Secret>,
    owner: &Owner,
    name: &str,
    type_: &str,
    data: BTreeMap<String, ByteString>,
    issued_for: Option<String>,
) -> Result<(), ReconcileError> {
    let mut secret: Secret = crate::workload::from_json(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": owner.meta(name.to_string(), "relay-link"),
        "type": type_,
    }));
    secret.data = Some(data);
    if let Some(issued_for) = issued_for {
        secret
            .annotations_mut()
            .insert(ISSUED_FOR.into(), issued_for);
    }
    // Server-side apply creates it or replaces the data; the caller has checked that an
    // existing one is this owner's.
    let params = PatchParams::apply(crate::FIELD_MANAGER).force();
    secrets.patch(name, &params, &Patch::Apply(&secret)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn roots(ca: &Ca) -> std::sync::Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(ca.cert_pem())).unwrap();
        roots.into()
    }

    fn provider() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }

    #[test]
    fn the_server_certificate_is_valid_for_the_service_names_only_as_a_server() {
        provider();
        let now = SystemTime::now();
        let ca = Ca::generate("iot/devices", now).unwrap();
        let names = vec!["devices-s-proxy.iot.svc".to_string()];
        let server = ca.issue(Role::Server, &names, now).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder(roots(&ca))
            .build()
            .unwrap();
        let at = UnixTime::since_unix_epoch(now.duration_since(SystemTime::UNIX_EPOCH).unwrap());
        let name = ServerName::try_from("devices-s-proxy.iot.svc").unwrap();
        verifier
            .verify_server_cert(&der(&server.cert_pem), &[], &name, &[], at)
            .expect("valid for its Service name");
        let other = ServerName::try_from("api.iot.svc").unwrap();
        assert!(
            verifier
                .verify_server_cert(&der(&server.cert_pem), &[], &other, &[], at)
                .is_err()
        );
        // A server certificate cannot be presented as r-proxy's client certificate.
        let clients = rustls::server::WebPkiClientVerifier::builder(roots(&ca))
            .build()
            .unwrap();
        assert!(
            clients
                .verify_client_cert(&der(&server.cert_pem), &[], at)
                .is_err()
        );
        assert!(PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).is_ok());
    }

    #[test]
    fn the_client_certificate_is_accepted_only_by_its_own_bridges_ca() {
        provider();
        let now = SystemTime::now();
        let ca = Ca::generate("iot/devices", now).unwrap();
        let client = ca
            .issue(Role::Client, &["devices-r-proxy".into()], now)
            .unwrap();
        let at = UnixTime::since_unix_epoch(now.duration_since(SystemTime::UNIX_EPOCH).unwrap());
        let verifier = rustls::server::WebPkiClientVerifier::builder(roots(&ca))
            .build()
            .unwrap();
        verifier
            .verify_client_cert(&der(&client.cert_pem), &[], at)
            .expect("the bridge's own r-proxy");
        let other = Ca::generate("iot/other", now).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder(roots(&other))
            .build()
            .unwrap();
        assert!(
            verifier
                .verify_client_cert(&der(&client.cert_pem), &[], at)
                .is_err(),
            "another bridge's r-proxy is refused"
        );
    }

    #[test]
    fn certificates_are_renewed_a_third_of_their_life_before_they_end() {
        let now = SystemTime::now();
        let ca = Ca::generate("iot/devices", now).unwrap();
        let leaf = ca.issue(Role::Client, &["r".into()], now).unwrap();
        let due = renew_at(&leaf.cert_pem).unwrap();
        // Issued a minute back-dated: 90 days and a minute, a third of it before the end.
        let expected = now + LEAF_VALIDITY - (LEAF_VALIDITY + Duration::from_secs(60)) / 3;
        let off = due
            .duration_since(expected)
            .unwrap_or_else(|e| e.duration());
        assert!(
            off < Duration::from_secs(2),
            "due {due:?}, expected {expected:?}"
        );
        assert!(due > now + Duration::from_secs(59 * 24 * 3600));
        let ca_due = renew_at(ca.cert_pem()).unwrap();
        assert!(ca_due > now + Duration::from_secs(6 * 365 * 24 * 3600));
        assert!(ca_due < now + CA_VALIDITY);
        assert_eq!(renew_at("not a certificate"), None);
    }

    #[test]
    fn a_kept_ca_is_reused_and_one_due_for_renewal_is_not() {
        let now = SystemTime::now();
        let ca = Ca::generate("iot/devices", now).unwrap();
        let secret = Secret {
            data: Some(ca.secret_data()),
            ..Secret::default()
        };
        let kept = Ca::from_secret("iot/devices", &secret, now).expect("a current CA is kept");
        assert_eq!(kept.cert_pem(), ca.cert_pem());
        // Leaves the kept CA issues chain to the same certificate.
        let leaf = kept.issue(Role::Client, &["r".into()], now).unwrap();
        provider();
        let verifier = rustls::server::WebPkiClientVerifier::builder(roots(&ca))
            .build()
            .unwrap();
        let at = UnixTime::since_unix_epoch(now.duration_since(SystemTime::UNIX_EPOCH).unwrap());
        verifier
            .verify_client_cert(&der(&leaf.cert_pem), &[], at)
            .expect("issued by the kept CA");
        let later = now + CA_VALIDITY - Duration::from_secs(24 * 3600);
        assert!(Ca::from_secret("iot/devices", &secret, later).is_none());
    }

    #[test]
    fn a_change_of_names_or_ca_means_a_new_certificate() {
        let names = ["a.svc".to_string()];
        let base = issued_for("CA1", Role::Server, &names);
        assert_eq!(base, issued_for("CA1", Role::Server, &names));
        assert_ne!(base, issued_for("CA2", Role::Server, &names));
        assert_ne!(base, issued_for("CA1", Role::Client, &names));
        assert_ne!(
            base,
            issued_for("CA1", Role::Server, &["b.svc".to_string()])
        );
    }
}
