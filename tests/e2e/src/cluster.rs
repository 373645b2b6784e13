//! A Kubernetes cluster as a user drives it: `kubectl` and `helm` on the command line, with the
//! test ground's environment (`KUBECTL`, `HELM`, `KUBECONFIG`). Shared by the real-pod tests,
//! which run the same way against the test ground's node and against a kind cluster.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// A file of the repository, from the e2e crate's manifest directory.
pub fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn tool(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.into())
}

/// Runs `kubectl args…` with `stdin` and returns what it said, whatever its exit status.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    let kubectl = tool("KUBECTL", "kubectl");
    let mut child = Command::new(&kubectl)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{kubectl}: {e}"));
    let mut pipe = child.stdin.take().expect("stdin is piped");
    if let Some(input) = stdin {
        std::io::Write::write_all(&mut pipe, input.as_bytes()).expect("write kubectl's stdin");
    }
    drop(pipe);
    child.wait_with_output().expect("kubectl's output")
}

/// `kubectl args…` that must succeed: its standard output, or a panic with its error.
pub fn kubectl_ok(args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl(args, stdin);
    assert!(
        out.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("kubectl prints UTF-8")
}

/// `kubectl get … -o json` parsed, `None` when kubectl fails (e.g. not found).
pub fn kubectl_json(args: &[&str]) -> Option<serde_json::Value> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let out = kubectl(&all, None);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("kubectl -o json prints JSON"))
}

/// `helm args…` that must succeed.
pub fn helm_ok(args: &[&str]) -> String {
    let helm = tool("HELM", "helm");
    let out = Command::new(&helm)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{helm}: {e}"));
    assert!(
        out.status.success(),
        "helm {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("helm prints UTF-8")
}

/// `kubectl wait --for=condition=… RESOURCE -n NS` as a user waits; on failure the panic shows
/// kubectl's error, the resource and `context` (e.g. the operator's log).
pub fn wait_for_condition(
    resource: &str,
    ns: &str,
    condition: &str,
    timeout: Duration,
    context: impl FnOnce() -> String,
) {
    let timeout = format!("--timeout={}s", timeout.as_secs());
    let wait = kubectl(
        &[
            "wait",
            &format!("--for=condition={condition}"),
            resource,
            "-n",
            ns,
            &timeout,
        ],
        None,
    );
    assert!(
        wait.status.success(),
        "kubectl wait --for=condition={condition} {resource}: {}\n{resource}: {}\n{}",
        String::from_utf8_lossy(&wait.stderr),
        String::from_utf8_lossy(&kubectl(&["get", resource, "-n", ns, "-o", "yaml"], None).stdout),
        context(),
    );
}

/// A namespace for pods that must really run. On the test ground the annotation in
/// `STRAIT_NODE_NAMESPACE_ANNOTATION` (`key=value`) sends its pods to the real node instead of
/// the kwok one; on a cluster without it (kind) it is a plain namespace.
pub fn create_pod_namespace(name: &str) {
    let annotation = std::env::var("STRAIT_NODE_NAMESPACE_ANNOTATION").unwrap_or_default();
    let annotations = match annotation.split_once('=') {
        Some((key, value)) => serde_json::json!({ key: value }),
        None => serde_json::json!({}),
    };
    let namespace = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "annotations": annotations},
    });
    kubectl_ok(&["apply", "-f", "-"], Some(&namespace.to_string()));
}

/// A Service `name.ns` without a selector whose one endpoint is `target` (`ip:port`): how pods
/// reach a peer that runs outside the cluster (the test Kafka and Mosquitto on the host) under
/// the name a user's resource gives it.
pub fn external_service(ns: &str, name: &str, port: u16, target: &str) {
    let (ip, target_port) = target
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{target} is ip:port"));
    let target_port: u16 = target_port
        .parse()
        .unwrap_or_else(|_| panic!("{target}: the port is a number"));
    let objects = serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"ports": [{"name": "main", "port": port, "targetPort": target_port}]},
            },
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": format!("{name}-external"),
                    "namespace": ns,
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "ports": [{"name": "main", "port": target_port, "protocol": "TCP"}],
                "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
            },
        ],
    });
    kubectl_ok(&["apply", "-f", "-"], Some(&objects.to_string()));
}

/// The address of a Service's port as the host reaches it: its ClusterIP, through kube-proxy.
pub fn service_address(ns: &str, service: &str, port: u16) -> std::net::SocketAddr {
    let svc = kubectl_json(&["service", service, "-n", ns])
        .unwrap_or_else(|| panic!("Service {ns}/{service} exists"));
    let ip = svc["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_else(|| panic!("Service {ns}/{service} has a ClusterIP: {svc}"));
    let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
    assert!(
        ports.iter().any(|p| p["port"] == port),
        "Service {ns}/{service} publishes port {port}: {ports:?}"
    );
    format!("{ip}:{port}").parse().expect("ClusterIP:port")
}

/// The logs of every container of the pods matching `selector` (for failure messages).
pub fn pod_logs(ns: &str, selector: &str) -> String {
    let out = kubectl(
        &[
            "logs",
            "-n",
            ns,
            "-l",
            selector,
            "--all-containers",
            "--prefix",
            "--tail=80",
        ],
        None,
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
