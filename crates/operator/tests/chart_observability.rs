//! The chart's opt-in observability (`monitoring.*` values), rendered by `helm template` as a
//! user installs it: the Grafana dashboard parses and every query names a metric the binaries
//! export; the PrometheusRule has the shape the Prometheus Operator reads and every alert
//! expression names exported metrics too. The exported names are each crate's `METRIC_NAMES`,
//! which that crate's own unit test holds equal to what its registry serves.
//!
//! `promtool check rules` would also parse the expressions, but building promtool here takes far
//! longer than the test suite; the expressions are instead tokenized below (balanced brackets,
//! metric names), which is what the dashboard check needs anyway.

mod support;

use std::collections::BTreeSet;

use serde_json::Value;
use strait_e2e::require;
use support::{helm_ok, repo_file};

const ON: &str = "monitoring.dashboard.enabled=true,monitoring.prometheusRule.enabled=true,\
                  monitoring.serviceMonitor.enabled=true";

/// Every metric name a Strait binary exports (histograms by their base name).
fn exported() -> BTreeSet<&'static str> {
    [
        strait_relay::metrics::METRIC_NAMES,
        strait_mqtt_relay::auth::METRIC_NAMES,
        strait_mqtt_kafka::io::metrics::METRIC_NAMES,
        strait_grpc_kafka::grpc::metrics::METRIC_NAMES,
        strait_operator::context::METRIC_NAMES,
        strait_operator::monitoring::RESOURCE_METRIC_NAMES,
    ]
    .concat()
    .into_iter()
    .collect()
}

fn is_exported(name: &str, exported: &BTreeSet<&str>) -> bool {
    exported.contains(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| exported.contains(base))
        })
}

fn render(values: &str) -> Vec<Value> {
    let chart = repo_file("charts/strait");
    let out = helm_ok(&[
        "template",
        "strait",
        chart.to_str().unwrap(),
        "-n",
        "strait-system",
        "--set",
        values,
    ]);
    serde_saphyr::from_multiple::<Value>(&out)
        .expect("helm renders YAML")
        .into_iter()
        .filter(|doc| doc.is_object())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind)
}

#[test]
fn observability_is_off_unless_asked_for() {
    require!("HELM", "helm");
    let docs = render("replicas=1");
    for kind in ["PrometheusRule", "ServiceMonitor"] {
        assert!(find(&docs, kind).is_none(), "{kind} rendered by default");
    }
    assert!(
        docs.iter()
            .all(|d| d["metadata"]["labels"]["grafana_dashboard"].is_null()),
        "a dashboard rendered by default"
    );
}

#[test]
fn the_dashboard_parses_and_queries_only_exported_metrics() {
    require!("HELM", "helm");
    let docs = render(ON);
    let config_map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("a ConfigMap labelled for Grafana's dashboard sidecar");
    assert_eq!(config_map["metadata"]["namespace"], "strait-system");
    let json = config_map["data"]["strait.json"]
        .as_str()
        .expect("the dashboard JSON");
    let dashboard: Value = serde_json::from_str(json).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "strait-overview");

    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut titles = Vec::new();
    let mut queries = Vec::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_i64().unwrap()),
            "panel ids are unique"
        );
        assert!(
            panel["gridPos"]["w"].as_i64().is_some(),
            "{panel} has a place"
        );
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap();
        titles.push(title.to_lowercase());
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has queries");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            queries.push((title.to_string(), expr.to_string()));
        }
    }
    for wanted in [
        "sessions",
        "messages in / out",
        "puback latency",
        "lag",
        "replicas",
        "errors by reason",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(wanted)),
            "a panel on {wanted}: {titles:?}"
        );
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.rsplit_once(','))
                .map(|(metric, _)| metric)
                .unwrap_or(query);
            queries.push((format!("variable {}", variable["name"]), inner.to_string()));
        }
    }
    check_metrics(&queries);
}

#[test]
fn the_alert_rules_have_the_operators_shape_and_use_exported_metrics() {
    require!("HELM", "helm");
    let docs = render(ON);
    let rule = find(&docs, "PrometheusRule").expect("a PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    let groups = rule["spec"]["groups"].as_array().expect("spec.groups");
    assert!(!groups.is_empty());
    let mut alerts = BTreeSet::new();
    let mut queries = Vec::new();
    for group in groups {
        assert!(group["name"].as_str().is_some_and(|n| !n.is_empty()));
        for rule in group["rules"].as_array().expect("rules") {
            let alert = rule["alert"].as_str().expect("an alert name");
            assert!(
                alert.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                    && alert.chars().all(|c| c.is_ascii_alphanumeric()),
                "{alert} is CamelCase"
            );
            assert!(alerts.insert(alert.to_string()), "{alert} twice");
            let expr = rule["expr"].as_str().expect("expr");
            assert!(
                !expr.contains("{{"),
                "{alert}: Helm left a template in {expr}"
            );
            queries.push((alert.to_string(), expr.to_string()));
            let r#for = rule["for"].as_str().expect("for");
            assert!(is_duration(r#for), "{alert}: for {for}");
            assert!(
                ["warning", "critical"].contains(&rule["labels"]["severity"].as_str().unwrap()),
                "{alert}: severity"
            );
            for annotation in ["summary", "description"] {
                let text = rule["annotations"][annotation].as_str().unwrap_or_default();
                assert!(!text.is_empty(), "{alert}: {annotation}");
            }
            assert!(
                rule["annotations"]["description"]
                    .as_str()
                    .unwrap()
                    .contains("{{ $labels."),
                "{alert}: the description reaches Prometheus with its $labels templates"
            );
        }
    }
    for wanted in [
        "StraitConsumerLagGrowing",
        "StraitResourceNotReady",
        "StraitAuthFailures",
        "StraitKafkaUnreachable",
    ] {
        assert!(alerts.contains(wanted), "{wanted} in {alerts:?}");
    }
    check_metrics(&queries);

    // The values reach the expressions.
    let docs = render(&format!("{ON},monitoring.prometheusRule.lagThreshold=5000"));
    let rule = find(&docs, "PrometheusRule").unwrap();
    assert!(
        rule["spec"]["groups"][0]["rules"][0]["expr"]
            .as_str()
            .unwrap()
            .contains("> 5000")
    );
}

#[test]
fn the_operator_is_scraped_on_its_metrics_port() {
    require!("HELM", "helm");
    let docs = render(ON);
    let monitor = find(&docs, "ServiceMonitor").expect("a ServiceMonitor");
    let service = docs
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "strait-metrics")
        .expect("the operator's metrics Service");
    let deployment = find(&docs, "Deployment").unwrap();
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (key, value) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(
            &pod_labels[key], value,
            "the Service selects the operator pods"
        );
    }
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            &service["metadata"]["labels"][key], value,
            "the monitor selects the Service"
        );
    }
    let port = &deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0];
    assert_eq!(port["name"], "metrics");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
}

/// Every metric every query names is exported; at least one per query.
fn check_metrics(queries: &[(String, String)]) {
    let exported = exported();
    for (what, expr) in queries {
        let names = metric_names(expr).unwrap_or_else(|e| panic!("{what}: {e} in {expr}"));
        assert!(!names.is_empty(), "{what}: no metric in {expr}");
        for name in names {
            assert!(
                is_exported(&name, &exported),
                "{what}: {name} is not a metric any Strait binary exports ({expr})"
            );
        }
    }
}

fn is_duration(text: &str) -> bool {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && ["ms", "s", "m", "h", "d", "w", "y"].contains(&unit)
}

/// PromQL words that are not metric names: aggregations, operators and modifiers.
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
    "atan2",
];

/// Words followed by a list of label names in parentheses.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names of the instant and range selectors in a PromQL expression: identifiers that
/// are neither functions (followed by `(`), keywords, label names (inside `{…}` or after `by`
/// and the like), numbers, durations nor Grafana variables. Fails on unbalanced brackets or an
/// unterminated string.
fn metric_names(expr: &str) -> Result<Vec<String>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut open = Vec::new();
    let mut i = 0;
    let skip_string = |i: usize| -> Result<usize, String> {
        let quote = chars[i];
        let mut j = i + 1;
        while j < chars.len() {
            match chars[j] {
                '\\' if quote != '`' => j += 2,
                c if c == quote => return Ok(j + 1),
                _ => j += 1,
            }
        }
        Err(format!("unterminated string at {i}"))
    };
    // Index after the bracket closing the one at `i` (`{…}`, `[…]`, `(…)`), strings skipped.
    let skip_group = |i: usize| -> Result<usize, String> {
        let close = match chars[i] {
            '{' => '}',
            '[' => ']',
            _ => ')',
        };
        let mut j = i + 1;
        while j < chars.len() {
            match chars[j] {
                '"' | '\'' | '`' => j = skip_string(j)?,
                c if c == close => return Ok(j + 1),
                '{' | '[' | '(' => return Err(format!("unexpected {} at {j}", chars[j])),
                _ => j += 1,
            }
        }
        Err(format!("unclosed {} at {i}", chars[i]))
    };
    let next_non_space = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(i)?,
            '{' | '[' => i = skip_group(i)?,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '(' => {
                open.push(i);
                i += 1;
            }
            ')' => {
                open.pop().ok_or(format!("unmatched ) at {i}"))?;
                i += 1;
            }
            '}' | ']' => return Err(format!("unmatched {c} at {i}")),
            '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let after = next_non_space(i);
                let call = after < chars.len() && chars[after] == '(';
                if LABEL_LISTS.contains(&word.as_str()) && call {
                    i = skip_group(after)?;
                } else if !call && !KEYWORDS.contains(&word.as_str()) {
                    names.push(word);
                }
            }
            _ => i += 1,
        }
    }
    match open.pop() {
        Some(at) => Err(format!("unclosed ( at {at}")),
        None => Ok(names),
    }
}

#[test]
fn metric_names_are_found_and_the_rest_is_not() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le, role) (rate(a_seconds_bucket{namespace=~"$namespace", x="b(c"}[$__rate_interval])))"#
        )
        .unwrap(),
        ["a_seconds_bucket"]
    );
    assert_eq!(
        metric_names("(m1 > 1000 and deriv(m1[15m]) > 0) or sum without (pod) (m2) == bool 1.5e3")
            .unwrap(),
        ["m1", "m1", "m2"]
    );
    assert_eq!(metric_names("count(m3 == 0) or vector(0)").unwrap(), ["m3"]);
    assert_eq!(
        metric_names("a / on (pod) group_left (node) b offset 5m").unwrap(),
        ["a", "b"]
    );
    assert!(metric_names("sum(rate(m[5m])").is_err());
    assert!(metric_names(r#"m{a="b}"#).is_err());
    assert!(metric_names("m]").is_err());
}
