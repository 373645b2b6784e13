//! Secrets into the pods: Kafka over SASL_SSL, an MQTT TLS listener, JWT keys.

use std::time::Duration;

use super::mqtt::next_311;
use super::*;

/// A certificate for the DNS name `host` signed by a fresh CA, made with openssl:
/// (CA PEM, cert PEM, key PEM).
pub(super) fn server_certificate(host: &str) -> (String, String, String) {
    let dir = std::env::temp_dir().join(unique_name("pods-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let san = format!("subjectAltName=DNS:{host}");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=pods test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    run(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=mqtt",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
    ]);
    std::fs::write(
        dir.join("ext"),
        format!("{san}\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext",
        "-out",
        "tls.crt",
    ]);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let pems = (read("ca.crt"), read("tls.crt"), read("tls.key"));
    let _ = std::fs::remove_dir_all(&dir);
    pems
}

/// Everything a Secret can carry into the pods: Kafka over SASL_SSL (the CA and the SCRAM
/// password from Secrets) and an MQTT TLS listener (certificate and key from a
/// `kubernetes.io/tls` Secret), under the read-only root filesystem. A TLS client publishes
/// QoS 1 and the record is in Kafka.
pub(super) async fn secrets_reach_the_pods(ns: &str, ground: &Ground, operator: &Operator) {
    let kafka_ca = std::fs::read_to_string(&ground.kafka_tls_ca).expect("read KAFKA_TLS_CA");
    let password = std::fs::read_to_string(&ground.kafka_scram_password_file)
        .expect("read KAFKA_SCRAM_PASSWORD_FILE");
    let secrets = serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kafka-ca", "namespace": ns},
             "stringData": {"ca.crt": kafka_ca}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kafka-user", "namespace": ns},
             "stringData": {"password": password.trim()}},
        ],
    });
    kubectl_ok(&["apply", "-f", "-"], Some(&secrets.to_string()));
    // Devices authenticate with a JWT signed by a key whose public half is in a Secret.
    let signer = JwtSigner::new();
    let jwks = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "secure-jwks", "namespace": ns},
        "stringData": {"jwks.json": signer.jwks()},
    });
    kubectl_ok(&["apply", "-f", "-"], Some(&jwks.to_string()));
    let messages = unique_name("secure-messages");
    let bridge = serde_json::json!({
        "apiVersion": "strait.dev/v1alpha1",
        "kind": "MqttBridge",
        "metadata": {"name": "secure", "namespace": ns},
        "spec": {
            "upstream": {"kafka": {
                "bootstrap": ground.kafka_sasl_ssl_for_pods,
                "tls": {"secretName": "kafka-ca"},
                "sasl": {"mechanism": "SCRAM-SHA-512", "username": ground.kafka_scram_user,
                         "passwordSecret": {"name": "kafka-user"}},
                "topics": {"messages": messages, "retained": unique_name("secure-retained"),
                           "sessions": unique_name("secure-sessions")},
                "newTopics": {"partitions": 1, "replicationFactor": 1},
            }},
            // No plain port: with TLS there is none unless asked for, and tokens never travel
            // in clear text.
            "listener": {"tls": {"secretName": "secure-tls", "port": 8883}},
            "auth": {"mode": "jwt", "jwt": {
                "issuer": JWT_ISSUER,
                "keysSecret": {"name": "secure-jwks"},
                "clientIdClaim": "sub",
                "publishClaim": "mqtt_pub",
            }},
            "rProxy": {"replicas": 1},
            "sProxy": {"replicas": 1},
        },
    });
    // The listener's certificate names the Service as pods would call it; the host, which has
    // no cluster DNS, connects to its ClusterIP and checks the certificate for that name.
    let service_name = format!("secure.{ns}.svc");
    let (ca, cert, key) = server_certificate(&service_name);
    let tls = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "secure-tls", "namespace": ns},
        "stringData": {"tls.crt": cert, "tls.key": key},
    });
    kubectl_ok(&["apply", "-f", "-"], Some(&tls.to_string()));
    kubectl_ok(&["apply", "-f", "-"], Some(&bridge.to_string()));
    wait_for_condition("mqttbridge/secure", ns, "Ready", READY, || {
        diagnostics(ns, operator)
    });

    let ports = kubectl_ok(
        &[
            "get",
            "service",
            "secure",
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.ports[*].port}",
        ],
        None,
    );
    assert_eq!(ports.trim(), "8883", "only MQTT over TLS is published");
    let address = service_address(ns, "secure", 8883);
    let device = unique_name("device");
    let tls = tls_for_name(&ca, &service_name);
    let device_options = |token: String| {
        let mut options =
            rumqttc::MqttOptions::new(device.clone(), address.ip().to_string(), address.port());
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.clone()),
        ));
        options.set_credentials("device", token);
        options
    };

    // A token signed by another key is refused: the keys came from the Secret.
    let (_forged, mut forged_events) =
        rumqttc::AsyncClient::new(device_options(JwtSigner::new().token(&device)), 16);
    let refused = poll_until!(
        forged_events,
        Duration::from_secs(60),
        "the forged token's CONNACK",
        |polled: Result<_, rumqttc::ConnectionError>| match polled {
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => Some(code),
            _ => None,
        }
    );
    assert!(
        matches!(
            refused,
            rumqttc::ConnectReturnCode::BadUserNamePassword
                | rumqttc::ConnectReturnCode::NotAuthorized
        ),
        "a forged token is refused, got {refused:?}"
    );

    let (client, mut events) = rumqttc::AsyncClient::new(device_options(signer.token(&device)), 16);
    let topic = format!("secure/{device}/up");
    client
        .publish(&topic, rumqttc::QoS::AtLeastOnce, false, "over tls")
        .await
        .unwrap();
    next_311(
        &mut events,
        Duration::from_secs(60),
        "PUBACK over TLS",
        |p| matches!(p, rumqttc::Packet::PubAck(_)).then_some(()),
    )
    .await;
    let keys = strait_e2e::kafka_record_keys(&ground.kafka, &messages, &topic, 1).await;
    assert_eq!(keys, [topic], "the message reached Kafka over SASL_SSL");
}

/// A TLS client that trusts only `ca_pem` and checks the server's certificate for `name`,
/// whatever address it connected to (the host reaches a Service by ClusterIP, its certificate
/// names the Service).
pub(super) fn tls_for_name(ca_pem: &str, name: &str) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName};
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.expect("a PEM certificate"))
            .expect("a CA certificate");
    }
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("a verifier");
    let verifier = NamedServer {
        inner,
        name: ServerName::try_from(name.to_string()).expect("a DNS name"),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(verifier))
        .with_no_client_auth();
    std::sync::Arc::new(config)
}

/// WebPKI verification of the server's chain for a fixed name instead of the dialled address.
#[derive(Debug)]
struct NamedServer {
    inner: std::sync::Arc<rustls::client::WebPkiServerVerifier>,
    name: rustls::pki_types::ServerName<'static>,
}

impl rustls::client::danger::ServerCertVerifier for NamedServer {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _dialled: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

const JWT_ISSUER: &str = "https://auth.pods.test/";

/// An ES256 key made for the test: its public half as a JWKS, and device tokens it signs.
struct JwtSigner {
    key: jsonwebtoken::EncodingKey,
    jwk: jsonwebtoken::jwk::Jwk,
}

impl JwtSigner {
    fn new() -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
        let key = jsonwebtoken::EncodingKey::from_ec_der(&pair.serialize_der());
        let mut jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::ES256)
                .expect("a JWK");
        jwk.common.key_id = Some("pods".into());
        Self { key, jwk }
    }

    fn jwks(&self) -> String {
        serde_json::to_string(&jsonwebtoken::jwk::JwkSet {
            keys: vec![self.jwk.clone()],
        })
        .expect("JWKS as JSON")
    }

    /// A token for device `sub` that may publish under `secure/{clientId}/`.
    fn token(&self, sub: &str) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("pods".into());
        let claims = serde_json::json!({
            "iss": JWT_ISSUER,
            "sub": sub,
            "exp": jsonwebtoken::get_current_timestamp() + 600,
            "mqtt_pub": ["secure/{clientId}/#"],
        });
        jsonwebtoken::encode(&header, &claims, &self.key).expect("a signed token")
    }
}
