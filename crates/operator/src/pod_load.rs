//! How loaded a proxy role's pods are, read from their own `/metrics`: the MqttBridge autoscaler
//! scales r-proxy by connections and s-proxy by sessions, figures only the pods know.
//!
//! Each ready pod is asked directly on its admin port (the NetworkPolicy admits the operator's
//! pods there). A pod that does not answer is reported, and the autoscaler then never scales
//! down on the partial sum.

use std::time::Duration;

use futures::{StreamExt as _, stream};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use crate::workload::ADMIN_PORT;

/// The gauge both relay roles export, labelled with their role.
pub const SESSIONS_METRIC: &str = "strait_mqtt_sessions_active";
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);
/// A proxy's whole metrics page is a few hundred KiB at most.
const MAX_PAGE: usize = 8 << 20;
/// Pods asked at once.
const CONCURRENT_SCRAPES: usize = 16;

/// One role's pods and what they reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Load {
    /// Ready pods.
    pub pods: i32,
    /// Sessions summed over the pods that answered.
    pub sessions: i64,
    /// Ready pods whose metrics could not be read, with why.
    pub unreadable: Vec<String>,
}

/// Sessions of `role` on the ready pods matching `selector` in `namespace`.
pub async fn read(
    client: &kube::Client,
    namespace: &str,
    selector: &str,
    role: &str,
) -> Result<Load, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let listed = pods.list(&ListParams::default().labels(selector)).await?;
    let ready: Vec<(String, String)> = listed
        .items
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none() && is_ready(pod))
        .filter_map(|pod| {
            let ip = pod.status.as_ref()?.pod_ip.clone()?;
            Some((pod.metadata.name.clone().unwrap_or_default(), ip))
        })
        .collect();
    let answers: Vec<(String, Result<i64, String>)> = stream::iter(ready.iter().cloned())
        .map(|(name, ip)| async move {
            let answer = match tokio::time::timeout(SCRAPE_TIMEOUT, scrape(&ip)).await {
                Ok(Ok(page)) => sessions_in(&page, role).ok_or_else(|| {
                    format!("its metrics have no {SESSIONS_METRIC}{{role=\"{role}\"}}")
                }),
                Ok(Err(error)) => Err(error),
                Err(_) => Err(format!("no answer within {SCRAPE_TIMEOUT:?}")),
            };
            (name, answer)
        })
        .buffer_unordered(CONCURRENT_SCRAPES)
        .collect()
        .await;
    let mut load = Load {
        pods: ready.len() as i32,
        ..Load::default()
    };
    for (name, answer) in answers {
        match answer {
            Ok(sessions) => load.sessions += sessions,
            Err(why) => load.unreadable.push(format!("{name}: {why}")),
        }
    }
    load.unreadable.sort();
    Ok(load)
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

async fn scrape(ip: &str) -> Result<String, String> {
    let address = if ip.contains(':') {
        format!("[{ip}]:{ADMIN_PORT}")
    } else {
        format!("{ip}:{ADMIN_PORT}")
    };
    let stream = tokio::net::TcpStream::connect(&address)
        .await
        .map_err(|e| format!("connecting to {address}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP to {address}: {e}"))?;
    tokio::spawn(connection);
    let request = hyper::Request::get("/metrics")
        .header(hyper::header::HOST, &address)
        .body(Empty::<Bytes>::new())
        .expect("a valid request");
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET http://{address}/metrics: {e}"))?;
    if !response.status().is_success() {
        return Err(format!(
            "GET http://{address}/metrics: {}",
            response.status()
        ));
    }
    let body = Limited::new(response.into_body(), MAX_PAGE)
        .collect()
        .await
        .map_err(|e| format!("reading http://{address}/metrics: {e}"))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| format!("{address}: metrics are not UTF-8"))
}

/// The value of [`SESSIONS_METRIC`] for `role` on a Prometheus text page, summed over its series.
fn sessions_in(page: &str, role: &str) -> Option<i64> {
    let role_label = format!("role=\"{role}\"");
    let mut found = None;
    for line in page.lines() {
        let Some(rest) = line.strip_prefix(SESSIONS_METRIC) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(labelled) => match labelled.split_once('}') {
                Some((labels, value)) => (labels, value),
                None => continue,
            },
            // `strait_mqtt_sessions_active_x ...` is another metric; unlabelled is not ours.
            None => continue,
        };
        if !labels.split(',').any(|label| label.trim() == role_label) {
            continue;
        }
        let value = value.split_whitespace().next()?.parse::<f64>().ok()?;
        *found.get_or_insert(0) += value as i64;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_role_series_only() {
        let page = "\
# HELP strait_mqtt_sessions_active MQTT sessions currently relayed
# TYPE strait_mqtt_sessions_active gauge
strait_mqtt_sessions_active{role=\"r-proxy\"} 12
strait_mqtt_sessions_active{role=\"s-proxy\"} 7
strait_mqtt_sessions_active_total{role=\"r-proxy\"} 99
strait_mqtt_sessions_total{role=\"r-proxy\"} 40
";
        assert_eq!(sessions_in(page, "r-proxy"), Some(12));
        assert_eq!(sessions_in(page, "s-proxy"), Some(7));
        assert_eq!(sessions_in(page, "grpc-kafka"), None);
        assert_eq!(sessions_in("", "r-proxy"), None);
    }
}
