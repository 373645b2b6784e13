//! MqttBridge against a real kube-apiserver (with controller-manager, scheduler and a kwok node,
//! so Deployments really roll out): the CRD is served, bad specs are refused naming the field, and
//! the operator turns an example into owned objects, reports Ready, rolls on change, reports a
//! missing Secret, and Kubernetes deletes what it owns with the bridge.
//!
//! One file (about 1100 lines) on purpose: each test binary links and starts its services once.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use strait_config::{RProxyConfig, SProxyConfig, Validate};
use strait_e2e::{Daemon, require, unique_name, wait_until};
use tokio::time::Instant;

mod support;

use support::{
    chart_operator, chart_operator_with, condition, helm_ok, install_crds, kubectl, kubectl_ok,
    namespace, repo_file, wait_for_condition, wait_for_ready_reason,
};

const BIN: &str = env!("CARGO_BIN_EXE_strait-operator");

fn bridge_yaml(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1\nkind: MqttBridge\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

#[tokio::test]
async fn invalid_specs_are_refused_naming_the_field() {
    require!("KUBECONFIG", "kube");
    install_crds();
    let client = Client::try_default().await.unwrap();
    let ns = namespace(&client).await;
    let cases = [
        (
            "  upstream: {broker: {address: 'b:1883'}}\n  auth: {mode: anonymous}\n  listener: {port: 70000}\n",
            "spec.listener.port",
        ),
        (
            "  upstream: {}\n",
            "spec.upstream needs exactly one of broker or kafka",
        ),
        (
            "  upstream: {broker: {address: nohost}}\n",
            "spec.upstream.broker.address must be HOST:PORT",
        ),
        (
            "  upstream: {broker: {address: 'b:1883'}}\n  rProxy: {serviceType: Magic}\n",
            "serviceType must be ClusterIP, NodePort or LoadBalancer",
        ),
        // Kafka authenticates nobody: a bridge open to every device must say `mode: anonymous`.
        (
            "  upstream: {kafka: {bootstrap: 'k:9092'}}\n",
            "spec.auth.mode is required with a Kafka upstream",
        ),
        (
            "  upstream: {broker: {address: 'b:1883'}}\n  auth: {mode: jwt}\n",
            "spec.auth.jwt is set exactly when spec.auth.mode is jwt",
        ),
        (
            "  upstream: {broker: {address: 'b:1883'}}\n  auth: {mode: password}\n",
            "spec.auth.passwordSecret is set exactly when spec.auth.mode is password",
        ),
        (
            "  upstream: {kafka: {bootstrap: 'k:9092'}}\n  auth: {mode: jwt, jwt: {issuer: i, keysSecret: {name: k}}}\n",
            "spec.auth.jwt.clientIdClaim is required with a Kafka upstream",
        ),
        (
            "  upstream: {kafka: {bootstrap: 'k:9092', maxRoutedTopics: 0}}\n  auth: {mode: anonymous}\n",
            "spec.upstream.kafka.maxRoutedTopics",
        ),
        (
            "  upstream: {kafka: {bootstrap: 'k:9092', routes: [{topic: 'a/{x}', messages: 't.${params.x}', partitions: 0}]}}\n  auth: {mode: anonymous}\n",
            "spec.upstream.kafka.routes[0].partitions",
        ),
    ];
    for (spec, expected) in cases {
        let out = kubectl(
            &["apply", "--server-side", "-n", &ns, "-f", "-"],
            Some(&bridge_yaml("bad", spec)),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{spec} should be refused");
        assert!(
            stderr.contains(expected),
            "{spec}: expected {expected:?} in {stderr}"
        );
    }
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"], None);
}

fn get_bridge(ns: &str, name: &str) -> serde_json::Value {
    serde_json::from_str(&kubectl_ok(
        &["get", "mqttbridge", name, "-n", ns, "-o", "json"],
        None,
    ))
    .unwrap()
}

fn template_hash(deployment: &Deployment) -> String {
    deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()["strait.dev/config-hash"]
        .clone()
}

#[tokio::test]
async fn example_bridge_becomes_ready_rolls_on_change_and_is_cleaned_up() {
    require!("KUBECONFIG", "kube");
    install_crds();
    let client = Client::try_default().await.unwrap();
    let ns = namespace(&client).await;

    // Installed with the chart; the operator runs with the chart's ServiceAccount permissions.
    let (operator, release, account) = chart_operator(&ns).await;
    for (verb, resource, allowed) in [
        ("patch", "deployments.apps", "yes"),
        ("get", "secrets", "yes"),
        ("create", "secrets", "yes"),
        ("delete", "secrets", "no"),
        ("create", "networkpolicies.networking.k8s.io", "yes"),
        ("create", "pods", "no"),
        ("delete", "mqttbridges.strait.dev", "no"),
    ] {
        let out = kubectl(
            &["auth", "can-i", verb, resource, "-n", &ns, "--as", &account],
            None,
        );
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(answer, allowed, "can the operator {verb} {resource}?");
    }

    let example = repo_file("examples/mqttbridge-broker.yaml");
    kubectl_ok(
        &[
            "apply",
            "--server-side",
            "-n",
            &ns,
            "-f",
            example.to_str().unwrap(),
        ],
        None,
    );
    wait_for_condition("mqttbridge/devices", &ns, "Ready", &operator.log());

    // The owned objects, with owner references so Kubernetes deletes them with the bridge.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    for name in ["devices-r-proxy", "devices-s-proxy"] {
        let deployment = deployments.get(name).await.unwrap();
        let owner = &deployment.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("MqttBridge", "devices")
        );
        assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(2));
        let pod = deployment.spec.unwrap().template.spec.unwrap();
        let container = &pod.containers[0];
        assert_eq!(
            container.image.as_deref(),
            Some("example.invalid/strait-proxy:test")
        );
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
    }
    let config = config_maps
        .get("devices-config")
        .await
        .unwrap()
        .data
        .unwrap();
    let r_proxy: RProxyConfig = serde_saphyr::from_str(&config["r-proxy.yaml"]).unwrap();
    r_proxy.validate().unwrap();
    assert_eq!(
        r_proxy.s_proxy.endpoints,
        [format!("https://devices-s-proxy-pods.{ns}.svc:50516")],
        "a mutual TLS relay link by default"
    );
    assert_eq!(r_proxy.limits.max_packet_size, 262_144);
    let s_proxy: SProxyConfig = serde_saphyr::from_str(&config["s-proxy.yaml"]).unwrap();
    assert_eq!(
        s_proxy.broker.unwrap().address,
        "mosquitto.mqtt.svc.cluster.local:1883"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    relay_through_rendered_configs(&config, Some(&secrets), "devices").await;
    let budget: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        Api::namespaced(client.clone(), &ns);
    let budget = budget.get("devices-r-proxy").await.unwrap();
    assert_eq!(budget.owner_references()[0].name, "devices");
    let ports: Vec<_> = services
        .get("devices")
        .await
        .unwrap()
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [1883, 8080]);

    let bridge = get_bridge(&ns, "devices");
    assert_eq!(
        bridge["status"]["observedGeneration"],
        bridge["metadata"]["generation"]
    );
    assert_eq!(bridge["status"]["replicas"], 2);
    assert_eq!(bridge["status"]["mode"], "broker");
    assert_eq!(
        bridge["status"]["endpoints"][0],
        format!("mqtt://devices.{ns}.svc:1883")
    );
    assert_eq!(
        condition(&bridge, "ProxiesReady").unwrap()["status"],
        "True"
    );

    // A spec change rolls the r-proxy pods (new config hash) and Ready follows the new generation.
    let before = template_hash(&deployments.get("devices-r-proxy").await.unwrap());
    kubectl_ok(
        &[
            "patch",
            "mqttbridge",
            "devices",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"limits":{"maxPacketSize":4096}}}"#,
        ],
        None,
    );
    wait_until(
        Duration::from_secs(30),
        "r-proxy template to change",
        || {
            let deployments = deployments.clone();
            let before = before.clone();
            async move {
                let now = template_hash(&deployments.get("devices-r-proxy").await.ok()?);
                (now != before).then_some(())
            }
        },
    )
    .await;
    wait_until(
        Duration::from_secs(60),
        "Ready for the new generation",
        || {
            let ns = ns.clone();
            async move {
                let bridge = get_bridge(&ns, "devices");
                let ready = condition(&bridge, "Ready")?;
                (ready["status"] == "True"
                    && ready["observedGeneration"] == bridge["metadata"]["generation"])
                    .then_some(())
            }
        },
    )
    .await;

    // A Secret that does not exist: Ready=False naming it; creating it recovers.
    kubectl_ok(
        &[
            "patch",
            "mqttbridge",
            "devices",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"listener":{"tls":{"secretName":"devices-tls"}}}}"#,
        ],
        None,
    );
    let ready = wait_for_ready_reason(
        "mqttbridge/devices",
        &ns,
        "SecretNotFound",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(ready["status"], "False", "{ready}");
    assert!(
        ready["message"].as_str().unwrap().contains("devices-tls"),
        "{ready}"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "devices-tls"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": "cert", "tls.key": "key"},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(60),
        "Ready again once the Secret exists",
        || {
            let ns = ns.clone();
            async move {
                let bridge = get_bridge(&ns, "devices");
                let ready = condition(&bridge, "Ready")?;
                (ready["status"] == "True" && bridge["status"]["endpoints"].as_array()?.len() == 3)
                    .then_some(())
            }
        },
    )
    .await;

    // JWT authentication: its keys Secret is checked and watched like the TLS one, and the
    // rendered r-proxy config verifies tokens against the mounted key set. The example keeps its
    // plain port, so tokens over it must be allowed in so many words (and are warned about).
    kubectl_ok(
        &[
            "patch",
            "mqttbridge",
            "devices",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"listener":{"allowPlaintextCredentials":true},"auth":{"mode":"jwt","jwt":{"issuer":"https://auth.example.com/","keysSecret":{"name":"device-jwks"},"publishClaim":"mqtt_publish"}}}}"#,
        ],
        None,
    );
    let ready = wait_for_ready_reason(
        "mqttbridge/devices",
        &ns,
        "SecretNotFound",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(ready["status"], "False", "{ready}");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("device-jwks") && message.contains("spec.auth.jwt.keysSecret.name"),
        "{ready}"
    );
    let jwks: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "device-jwks"},
        "stringData": {"jwks.json": "{\"keys\": []}"},
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &jwks).await.unwrap();
    wait_until(
        Duration::from_secs(60),
        "Ready again once the JWT keys Secret exists",
        || {
            let ns = ns.clone();
            async move {
                let ready = condition(&get_bridge(&ns, "devices"), "Ready")?;
                (ready["status"] == "True").then_some(())
            }
        },
    )
    .await;
    let warning = condition(&get_bridge(&ns, "devices"), "Warning").unwrap();
    assert_eq!(warning["status"], "True");
    assert!(
        warning["message"]
            .as_str()
            .unwrap()
            .contains("allowPlaintextCredentials")
    );
    let rendered = config_maps
        .get("devices-config")
        .await
        .unwrap()
        .data
        .unwrap();
    let r_proxy: strait_config::RProxyConfig =
        serde_saphyr::from_str(&rendered["r-proxy.yaml"]).unwrap();
    let jwt = r_proxy.auth.jwt.expect("auth.jwt rendered");
    assert_eq!(jwt.keys_file.to_str(), Some("/etc/strait/jwt/jwks.json"));
    let pod = deployments
        .get("devices-r-proxy")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    assert!(
        pod.volumes.unwrap().iter().any(|v| v
            .secret
            .as_ref()
            .is_some_and(|s| s.secret_name.as_deref() == Some("device-jwks"))),
        "the r-proxy pods mount the keys Secret"
    );

    // Deleting the bridge deletes everything it owns (Kubernetes' garbage collector).
    kubectl_ok(&["delete", "mqttbridge", "devices", "-n", &ns], None);
    wait_until(
        Duration::from_secs(60),
        "owned objects to be deleted",
        || {
            let (deployments, config_maps) = (deployments.clone(), config_maps.clone());
            async move {
                let left = deployments
                    .list(
                        &kube::api::ListParams::default()
                            .labels("app.kubernetes.io/instance=devices"),
                    )
                    .await
                    .ok()?
                    .items
                    .len()
                    + config_maps
                        .get_opt("devices-config")
                        .await
                        .ok()?
                        .iter()
                        .count();
                (left == 0).then_some(())
            }
        },
    )
    .await;
    // (Other tests' namespaces being deleted answer "forbidden" too; RBAC denials name the user.)
    assert!(
        !operator.log().contains("is forbidden: User"),
        "RBAC denied something:\n{}",
        operator.log()
    );
    drop(operator);
    helm_ok(&["uninstall", &release, "-n", &ns]);
    let namespaces: Api<Namespace> = Api::all(client);
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    let _ = ResourceExt::name_any(&secret);
}

/// The bar for a user who sets no security field, with the operator installed in namespace mode:
/// an mTLS relay link from the bridge's own CA, NetworkPolicies the API server accepts, no plain
/// port once TLS is set, no object taken over, no image outside the allow-list, and no Secret
/// readable outside the watched namespace.
#[tokio::test]
async fn a_bridge_with_no_security_fields_is_secure_and_the_operator_stays_in_its_namespace() {
    require!("KUBECONFIG", "kube");
    install_crds();
    let client = Client::try_default().await.unwrap();
    let ns = namespace(&client).await;
    let other = namespace(&client).await;
    let watch = format!("watchNamespaces={{{ns}}}");
    let flag = format!("--watch-namespace={ns}");
    let (operator, release, account) = chart_operator_with(&ns, &[&watch], &[&flag]).await;
    for (verb, resource, namespace, allowed) in [
        ("get", "secrets", &ns, "yes"),
        ("create", "secrets", &ns, "yes"),
        ("get", "secrets", &other, "no"),
        ("list", "secrets", &other, "no"),
        ("patch", "deployments.apps", &other, "no"),
    ] {
        let out = kubectl(
            &[
                "auth", "can-i", verb, resource, "-n", namespace, "--as", &account,
            ],
            None,
        );
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(
            answer, allowed,
            "can the operator {verb} {resource} in {namespace}?"
        );
    }

    let apply = |name: &str, spec: &str| {
        kubectl_ok(
            &["apply", "--server-side", "-n", &ns, "-f", "-"],
            Some(&bridge_yaml(name, spec)),
        );
    };
    // A bridge in a namespace the operator does not watch: never reconciled (checked at the end).
    kubectl_ok(
        &["apply", "--server-side", "-n", &other, "-f", "-"],
        Some(&bridge_yaml(
            "elsewhere",
            "  upstream: {broker: {address: 'b:1883'}}\n",
        )),
    );
    apply(
        "bare",
        "  upstream: {broker: {address: 'mosquitto.mqtt.svc:1883'}}\n",
    );
    wait_for_condition("mqttbridge/bare", &ns, "Ready", &operator.log());
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let config = config_maps.get("bare-config").await.unwrap().data.unwrap();
    let r_proxy: RProxyConfig = serde_saphyr::from_str(&config["r-proxy.yaml"]).unwrap();
    assert_eq!(
        r_proxy.s_proxy.endpoints,
        [format!("https://bare-s-proxy-pods.{ns}.svc:50516")]
    );
    let s_proxy: SProxyConfig = serde_saphyr::from_str(&config["s-proxy.yaml"]).unwrap();
    assert!(
        s_proxy.tls.client_ca.is_some(),
        "s-proxy requires r-proxy's certificate"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for name in [
        "bare-relay-ca",
        "bare-s-proxy-link-tls",
        "bare-r-proxy-link-tls",
    ] {
        let secret = secrets.get(name).await.unwrap();
        assert_eq!(
            secret.owner_references()[0].name,
            "bare",
            "{name} is owned by the bridge"
        );
    }
    // The proxies run with the certificates the operator issued: the link works.
    relay_through_rendered_configs(&config, Some(&secrets), "bare").await;
    // A certificate Secret that goes missing is issued again, from the same CA.
    let ca = secrets.get("bare-relay-ca").await.unwrap().data.unwrap()["ca.crt"].clone();
    secrets
        .delete("bare-r-proxy-link-tls", &DeleteParams::default())
        .await
        .unwrap();
    let reissued = wait_until(
        Duration::from_secs(30),
        "r-proxy's certificate issued again",
        || {
            let secrets = secrets.clone();
            async move {
                secrets
                    .get_opt("bare-r-proxy-link-tls")
                    .await
                    .ok()?
                    .and_then(|s| s.data)
            }
        },
    )
    .await;
    assert_eq!(reissued["ca.crt"], ca, "issued by the bridge's CA");
    let policies: Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
        Api::namespaced(client.clone(), &ns);
    let mut names: Vec<_> = policies
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    names.sort();
    assert_eq!(names, ["bare-r-proxy", "bare-s-proxy"]);
    let bridge = get_bridge(&ns, "bare");
    // The one thing not closed is said so: the broker, not r-proxy, judges the devices.
    let warning = condition(&bridge, "Warning").unwrap();
    assert_eq!(warning["status"], "True");
    assert!(
        warning["message"]
            .as_str()
            .unwrap()
            .contains("spec.auth.mode unset")
    );

    // With a TLS listener, the Service publishes no plain port.
    kubectl_ok(
        &[
            "create",
            "secret",
            "tls",
            "bare-listener",
            "-n",
            &ns,
            "--cert",
            repo_file("crates/operator/tests/fixtures/listener.crt")
                .to_str()
                .unwrap(),
            "--key",
            repo_file("crates/operator/tests/fixtures/listener.key")
                .to_str()
                .unwrap(),
        ],
        None,
    );
    apply(
        "bare",
        "  upstream: {broker: {address: 'mosquitto.mqtt.svc:1883'}}\n  listener: {tls: {secretName: bare-listener}}\n",
    );
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    wait_until(
        Duration::from_secs(30),
        "the Service to publish only MQTT over TLS",
        || {
            let services = services.clone();
            async move {
                let ports: Vec<i32> = services
                    .get("bare")
                    .await
                    .ok()?
                    .spec?
                    .ports?
                    .iter()
                    .map(|p| p.port)
                    .collect();
                (ports == [8883]).then_some(())
            }
        },
    )
    .await;

    // r-proxy reads its ACL only at start: a changed ACL ConfigMap rolls its pods.
    let acl = |rules: &str| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "bare-acl", "namespace": ns},
            "data": {"acl.yaml": rules},
        })
        .to_string()
    };
    kubectl_ok(
        &["apply", "-f", "-"],
        Some(&acl("anonymous: {subscribe: [public/#]}\n")),
    );
    apply(
        "bare",
        "  upstream: {broker: {address: 'mosquitto.mqtt.svc:1883'}}\n  listener: {tls: {secretName: bare-listener}}\n  auth: {mode: anonymous, aclConfigMap: {name: bare-acl}}\n",
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let with_acl = wait_until(
        Duration::from_secs(30),
        "r-proxy rendered with the ACL",
        || {
            let config_maps = config_maps.clone();
            let deployments = deployments.clone();
            async move {
                let config = config_maps.get("bare-config").await.ok()?.data?;
                config["r-proxy.yaml"].contains("aclFile").then_some(())?;
                Some(template_hash(&deployments.get("bare-r-proxy").await.ok()?))
            }
        },
    )
    .await;
    kubectl_ok(
        &["apply", "-f", "-"],
        Some(&acl("anonymous: {subscribe: [other/#]}\n")),
    );
    wait_until(
        Duration::from_secs(30),
        "a changed ACL to roll r-proxy",
        || {
            let deployments = deployments.clone();
            let with_acl = with_acl.clone();
            async move {
                let now = template_hash(&deployments.get("bare-r-proxy").await.ok()?);
                (now != with_acl).then_some(())
            }
        },
    )
    .await;

    // A Service the user made is never taken over, and is left as it was.
    kubectl_ok(
        &[
            "create",
            "service",
            "clusterip",
            "taken",
            "-n",
            &ns,
            "--tcp=80:80",
        ],
        None,
    );
    apply(
        "taken",
        "  upstream: {broker: {address: 'mosquitto.mqtt.svc:1883'}}\n",
    );
    wait_for_ready_reason(
        "mqttbridge/taken",
        &ns,
        "ObjectNotOwned",
        Duration::from_secs(30),
    )
    .await;
    let taken = services.get("taken").await.unwrap();
    assert!(taken.metadata.owner_references.is_none(), "{taken:?}");
    assert_eq!(taken.spec.unwrap().ports.unwrap()[0].port, 80);

    // spec.image outside the allow-list is refused, naming the field.
    apply(
        "foreign",
        "  upstream: {broker: {address: 'mosquitto.mqtt.svc:1883'}}\n  image: evil.example/miner:latest\n",
    );
    let refused = wait_for_ready_reason(
        "mqttbridge/foreign",
        &ns,
        "ImageNotAllowed",
        Duration::from_secs(30),
    )
    .await;
    assert!(refused["message"].as_str().unwrap().contains("spec.image"));
    assert!(
        deployments
            .get_opt("foreign-r-proxy")
            .await
            .unwrap()
            .is_none()
    );

    // It never tried to watch or touch anything outside its namespace (a cluster-wide watch
    // would have been forbidden under these Roles).
    let log = operator.log();
    assert!(!log.to_lowercase().contains("forbidden"), "{log}");
    drop(operator);
    helm_ok(&["uninstall", &release, "-n", &ns]);
    for namespace in [&ns, &other] {
        kubectl_ok(&["delete", "namespace", namespace, "--wait=false"], None);
    }
}

#[tokio::test]
async fn one_of_two_operators_reconciles_and_the_other_takes_over() {
    require!("KUBECONFIG", "kube");
    install_crds();
    let lease = unique_name("strait-lease");
    let args = [
        "--lease-name",
        lease.as_str(),
        "--lease-namespace",
        "default",
    ];
    let mut first = Daemon::start(BIN, &args).await;
    wait_until(
        Duration::from_secs(30),
        "the first operator to lead",
        || {
            let log = first.log();
            async move { log.contains("leading").then_some(()) }
        },
    )
    .await;
    let second = Daemon::start(BIN, &args).await;
    // The second is ready (a standby is healthy) but does not lead while the first holds the lease.
    let standby_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < standby_until {
        assert!(
            !second.log().contains("leading"),
            "two leaders:\n{}",
            second.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = first.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{}", first.log());
    assert!(first.log().contains("lease released"), "{}", first.log());
    wait_until(
        Duration::from_secs(20),
        "the second operator to take over",
        || {
            let log = second.log();
            async move { log.contains("leading").then_some(()) }
        },
    )
    .await;
}

/// The proxies started as local processes with the configs the operator rendered (addresses moved
/// to loopback, the broker to the test Mosquitto) and, for a TLS link, the certificates the
/// operator issued in `secrets`: a message goes through them.
async fn relay_through_rendered_configs(
    rendered: &std::collections::BTreeMap<String, String>,
    secrets: Option<&Api<Secret>>,
    bridge: &str,
) {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let proxy = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("strait-proxy"))
        .filter(|path| path.exists())
        .expect("strait-proxy next to the test binaries (cargo test --workspace builds it)");
    let (grpc, mqtt) = (strait_e2e::free_local_addr(), strait_e2e::free_local_addr());
    let mut s_config: SProxyConfig = serde_saphyr::from_str(&rendered["s-proxy.yaml"]).unwrap();
    s_config.listen = grpc;
    if let Some(target) = s_config.broker.as_mut() {
        target.address = broker.clone();
    }
    let mut r_config: RProxyConfig = serde_saphyr::from_str(&rendered["r-proxy.yaml"]).unwrap();
    r_config.listeners.tcp = Some(mqtt);
    r_config.listeners.ws = None;
    let dir = std::env::temp_dir().join(unique_name("rendered"));
    std::fs::create_dir_all(&dir).unwrap();
    let endpoint = r_config.s_proxy.endpoints[0].clone();
    match endpoint.strip_prefix("https://") {
        Some(_) => {
            // The rendered serverName (the s-proxy Service's name) is still what r-proxy checks
            // s-proxy's certificate against; only the address moves to loopback.
            assert!(r_config.s_proxy.server_name.is_some());
            r_config.s_proxy.endpoints = vec![format!("https://{grpc}")];
            let secrets = secrets.expect("the link certificates' Secrets");
            let link = |role: &str| {
                let dir = dir.join(role);
                std::fs::create_dir_all(&dir).unwrap();
                let secret = format!("{bridge}-{role}-link-tls");
                (dir, secret)
            };
            for (role, (files, secret)) in
                [("s-proxy", link("s-proxy")), ("r-proxy", link("r-proxy"))]
            {
                let data = secrets.get(&secret).await.unwrap().data.unwrap();
                for (key, value) in data {
                    std::fs::write(files.join(&key), value.0).unwrap();
                }
                let file = |key: &str| Some(files.join(key));
                if role == "s-proxy" {
                    assert_eq!(
                        s_config
                            .tls
                            .client_ca
                            .as_ref()
                            .unwrap()
                            .file_name()
                            .unwrap(),
                        "ca.crt"
                    );
                    s_config.tls.cert = file("tls.crt");
                    s_config.tls.key = file("tls.key");
                    s_config.tls.client_ca = file("ca.crt");
                } else {
                    r_config.s_proxy.tls.ca = file("ca.crt");
                    r_config.s_proxy.tls.cert = file("tls.crt");
                    r_config.s_proxy.tls.key = file("tls.key");
                }
            }
        }
        None => r_config.s_proxy.endpoints = vec![format!("http://{grpc}")],
    }
    let (s_path, r_path) = (dir.join("s-proxy.yaml"), dir.join("r-proxy.yaml"));
    std::fs::write(&s_path, strait_config::to_yaml(&s_config)).unwrap();
    std::fs::write(&r_path, strait_config::to_yaml(&r_config)).unwrap();
    let proxy = proxy.to_str().unwrap();
    let _s_proxy = Daemon::start(proxy, &["s-proxy", "--config", s_path.to_str().unwrap()]).await;
    let _r_proxy = Daemon::start(proxy, &["r-proxy", "--config", r_path.to_str().unwrap()]).await;

    // A retained message, so the subscriber gets it whenever it subscribes.
    let topic = format!("strait/operator/{}", unique_name("rendered"));
    let port = mqtt.port().to_string();
    let published = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-r",
            "-t",
            &topic,
            "-m",
            "via rendered config",
        ])
        .output()
        .unwrap();
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    let received = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "mqttv5",
            "-t",
            &topic,
            "-C",
            "1",
            "-W",
            "10",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&received.stdout).trim(),
        "via rendered config"
    );
    // Clear the retained message again.
    let _ = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-r", "-n", "-t", &topic])
        .status();
}

#[tokio::test]
async fn kafka_bridge_creates_compacted_topics_and_relays_through_kafka() {
    require!("KUBECONFIG", "kube");
    let bootstrap = require!("KAFKA_BOOTSTRAP", "kafka");
    install_crds();
    let client = Client::try_default().await.unwrap();
    let ns = namespace(&client).await;
    let lease = unique_name("mqb-kafka-lease");
    let operator = Daemon::start(
        BIN,
        &[
            "--proxy-image",
            "example.invalid/strait-proxy:test",
            "--lease-name",
            &lease,
        ],
    )
    .await;
    let topic = |kind: &str| unique_name(&format!("mqtt-{kind}"));
    let (messages, retained, sessions) = (topic("messages"), topic("retained"), topic("sessions"));
    let alerts = topic("alerts");
    let spec = format!(
        "  auth: {{mode: anonymous}}\n  upstream:\n    kafka:\n      bootstrap: \"{bootstrap}\"\n      topics: {{messages: {messages}, retained: {retained}, sessions: {sessions}}}\n      newTopics: {{partitions: 2, replicationFactor: 1}}\n      maxRoutedTopics: 50\n      routes:\n      - {{topic: 'sensors/{{id}}/#', messages: 'telemetry.${{params.id}}', partitions: 6, topicPattern: 'telemetry\\.dev-[0-9]+'}}\n      - {{topic: 'alerts/#', messages: '{alerts}', partitions: 3}}\n"
    );
    kubectl_ok(
        &["apply", "--server-side", "-n", &ns, "-f", "-"],
        Some(&bridge_yaml("fleet", &spec)),
    );
    wait_for_condition("mqttbridge/fleet", &ns, "Ready", &operator.log());
    let bridge = get_bridge(&ns, "fleet");
    assert_eq!(bridge["status"]["mode"], "kafka");
    assert_eq!(
        condition(&bridge, "TopicsReady").unwrap()["reason"],
        "TopicsExist"
    );

    // The topics exist, retained and sessions compacted.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
    for (name, policy) in [
        (&messages, "delete"),
        (&retained, "compact"),
        (&sessions, "compact"),
    ] {
        let described = admin
            .describe_configs(
                [&rdkafka::admin::ResourceSpecifier::Topic(name)],
                &rdkafka::admin::AdminOptions::new(),
            )
            .await
            .unwrap();
        let config = described[0]
            .as_ref()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            config
                .get("cleanup.policy")
                .and_then(|e| e.value.as_deref()),
            Some(policy),
            "{name}"
        );
    }

    // A shared subscription's consumer group 5 records behind on the messages topic: the
    // bridge's status reports its lag (the operator reads it every pass).
    let group = format!("strait-share:{messages}:workers:jobs/#");
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    for _ in 0..5 {
        producer
            .send(
                rdkafka::producer::FutureRecord::<(), _>::to(&messages)
                    .partition(0)
                    .payload("job"),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    {
        use rdkafka::consumer::Consumer as _;
        let member = strait_e2e::group_offsets_client(&bootstrap, &group);
        let mut offsets = rdkafka::TopicPartitionList::new();
        offsets
            .add_partition_offset(&messages, 0, rdkafka::Offset::Offset(0))
            .unwrap();
        member
            .commit(&offsets, rdkafka::consumer::CommitMode::Sync)
            .unwrap();
    }
    // A label change is a change the operator reacts to (its own status writes are not).
    kubectl_ok(
        &[
            "label",
            "mqttbridge",
            "fleet",
            "-n",
            &ns,
            "strait.dev/test=lag",
        ],
        None,
    );
    let bridge = wait_until(
        Duration::from_secs(60),
        "status.lag of the shared group",
        || {
            let ns = ns.clone();
            async move {
                let bridge = get_bridge(&ns, "fleet");
                (bridge["status"]["lag"] == 5).then_some(bridge)
            }
        },
    )
    .await;
    assert_eq!(bridge["status"]["sharedGroups"], 1);
    assert_eq!(
        condition(&bridge, "Scaling").unwrap()["reason"],
        "Manual",
        "no autoscale set"
    );

    // The rendered configs, run as local proxies, carry MQTT through Kafka.
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let config = config_maps.get("fleet-config").await.unwrap().data.unwrap();
    let s_proxy: SProxyConfig = serde_saphyr::from_str(&config["s-proxy.yaml"]).unwrap();
    let kafka = s_proxy.kafka.as_ref().unwrap();
    assert!(
        !kafka.create_topics,
        "the operator owns the topics it can name"
    );
    assert!(
        kafka.creates_routed_topics(),
        "s-proxy creates those of ${{params}} routes"
    );
    assert_eq!(kafka.max_routed_topics, 50);
    let routed = &kafka.routes[0];
    assert_eq!(
        (routed.partitions, routed.topic_pattern.as_deref()),
        (Some(6), Some("telemetry\\.dev-[0-9]+"))
    );
    // The static route's topic is pre-created with the route's partitions.
    let metadata = admin
        .inner()
        .fetch_metadata(Some(&alerts), std::time::Duration::from_secs(10))
        .unwrap();
    assert_eq!(metadata.topics()[0].partitions().len(), 3, "{alerts}");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    relay_through_rendered_configs(&config, Some(&secrets), "fleet").await;
    drop(operator);
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"], None);
}
