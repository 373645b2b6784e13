//! The Kubernetes control plane of the test services: objects are stored and validated, and
//! Deployments really roll out (controller-manager, scheduler and a kwok node).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use strait_e2e::{require, unique_name, wait_until};

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("valid object")
}

#[tokio::test]
async fn deployment_rolls_out_on_the_kwok_node() {
    require!("KUBECONFIG", "kube");
    let client = Client::try_default().await.expect("client from KUBECONFIG");
    let ns = unique_name("e2e");

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &from_json(serde_json::json!({"metadata": {"name": ns}})),
        )
        .await
        .expect("create namespace");

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    config_maps
        .create(
            &PostParams::default(),
            &from_json(serde_json::json!({
                "metadata": {"name": "settings"},
                "data": {"proxy.yaml": "listen: 0.0.0.0:1883\n"},
            })),
        )
        .await
        .expect("create configmap");
    let stored = config_maps.get("settings").await.expect("read configmap");
    assert_eq!(stored.data.unwrap()["proxy.yaml"], "listen: 0.0.0.0:1883\n");

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .create(
            &PostParams::default(),
            &from_json(serde_json::json!({
                "metadata": {"name": "hello"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "hello"}},
                    "template": {
                        "metadata": {"labels": {"app": "hello"}},
                        "spec": {"containers": [{"name": "hello", "image": "example.invalid/hello:1"}]},
                    },
                },
            })),
        )
        .await
        .expect("create deployment");

    let ready = wait_until(Duration::from_secs(60), "readyReplicas: 1", || async {
        let deployment = deployments.get("hello").await.ok()?;
        let status = deployment.status?;
        (status.ready_replicas == Some(1)).then_some(status)
    })
    .await;
    assert_eq!(ready.available_replicas, Some(1));

    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .expect("delete namespace");
}

fn run(command: &mut Command, stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or_default()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

/// `helm template` the fixture chart with `values`, then `kubectl apply --dry-run=server` it.
fn template_and_dry_run(helm: &str, kubectl: &str, values: &[&str]) -> (Output, Output) {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hello-chart");
    let mut template = Command::new(helm);
    template.arg("template").arg("hello").arg(&chart);
    for value in values {
        template.arg("--set").arg(value);
    }
    let rendered = run(&mut template, None);
    assert!(
        rendered.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let applied = run(
        Command::new(kubectl).args([
            "apply",
            "--server-side",
            "--dry-run=server",
            "--namespace=default",
            "-f",
            "-",
        ]),
        Some(&rendered.stdout),
    );
    (rendered, applied)
}

#[test]
fn helm_chart_renders_and_passes_server_side_validation() {
    require!("KUBECONFIG", "kube");
    let helm = require!("HELM", "kube");
    let kubectl = require!("KUBECTL", "kube");

    let (_, applied) = template_and_dry_run(&helm, &kubectl, &[]);
    let stdout = String::from_utf8_lossy(&applied.stdout);
    assert!(
        applied.status.success(),
        "dry run rejected: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    assert!(
        stdout.contains("deployment.apps/hello-web serverside-applied (server dry run)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("configmap/hello-settings serverside-applied (server dry run)"),
        "{stdout}"
    );

    // The same chart with a value the API server must refuse: the error names the field.
    let (_, refused) = template_and_dry_run(&helm, &kubectl, &["replicas=-1"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "negative replicas accepted");
    assert!(
        stderr.contains("spec.replicas"),
        "error names the field: {stderr}"
    );
}
