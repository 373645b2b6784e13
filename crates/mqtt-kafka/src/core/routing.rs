//! Where a PUBLISH goes in Kafka: the messages topic (routes with `{params}`) and the partition
//! key (`clients` patterns), with the Java client's murmur2 partitioner.

use std::borrow::Cow;

use strait_config::mqtt_kafka::{
    KafkaConfig, MAX_TOPIC_NAME, MqttKafkaRoute, is_topic_char, route_topic_pattern,
};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Plus,
    Hash,
    Param(String),
}

/// An MQTT topic filter whose levels may be `{name}` (captures one level).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    levels: Vec<Level>,
}

impl Pattern {
    pub fn parse(pattern: &str) -> Self {
        let levels = pattern
            .split('/')
            .map(|level| match level {
                "+" => Level::Plus,
                "#" => Level::Hash,
                _ => match level.strip_prefix('{').and_then(|l| l.strip_suffix('}')) {
                    Some(name) => Level::Param(name.to_string()),
                    None => Level::Literal(level.to_string()),
                },
            })
            .collect();
        Self { levels }
    }

    /// The captured `{params}` when `topic` matches.
    pub fn capture<'t>(&self, topic: &'t str) -> Option<Vec<(&str, &'t str)>> {
        let mut params = Vec::new();
        let mut names = topic.split('/');
        for level in &self.levels {
            match (level, names.next()) {
                (Level::Hash, _) => return Some(params),
                (Level::Plus, Some(_)) => {}
                (Level::Param(name), Some(value)) => params.push((name.as_str(), value)),
                (Level::Literal(l), Some(n)) if l == n => {}
                _ => return None,
            }
        }
        names.next().is_none().then_some(params)
    }
}

/// Routes and client patterns of the `kafka` config section.
#[derive(Debug, Clone)]
pub struct Routing {
    default: String,
    routes: Vec<(Pattern, String)>,
    /// Per route: its MQTT topic filter as configured (for errors) and its `topicPattern`.
    checks: Vec<RouteCheck>,
    clients: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct RouteCheck {
    filter: String,
    /// `topicPattern` as configured and compiled.
    allowed: Option<(String, regex::Regex)>,
}

/// The topic a `${params}` route renders for a PUBLISH, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedTopic {
    pub name: String,
    /// Index into the config's `routes`.
    pub route: usize,
}

/// Why a PUBLISH cannot go to the topic its `${params}` route renders.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteRefusal {
    #[error(
        "route {route:?}: {{{param}}} = {value:?} cannot be part of a Kafka topic name \
         (letters, digits, '.', '_', '-')"
    )]
    InvalidParam {
        route: String,
        param: String,
        value: String,
    },
    #[error(
        "route {route:?}: topic name {name:?} is longer than Kafka's {MAX_TOPIC_NAME} characters"
    )]
    TooLong { route: String, name: String },
    #[error("route {route:?}: topic name {name:?} does not match its topicPattern {pattern:?}")]
    NotAllowed {
        route: String,
        name: String,
        pattern: String,
    },
}

impl Routing {
    pub fn new(config: &KafkaConfig) -> Self {
        Self {
            default: config.topics.messages.clone(),
            routes: config
                .routes
                .iter()
                .map(|route| (Pattern::parse(&route.topic), route.messages.clone()))
                .collect(),
            checks: config.routes.iter().map(RouteCheck::new).collect(),
            clients: config.clients.iter().map(|c| Pattern::parse(c)).collect(),
        }
    }

    /// The Kafka messages topic of MQTT topic `topic`.
    pub fn messages_topic(&self, topic: &str) -> Cow<'_, str> {
        for (pattern, template) in &self.routes {
            if let Some(params) = pattern.capture(topic) {
                if params.is_empty() || !template.contains("${") {
                    return Cow::Borrowed(template);
                }
                let mut rendered = template.clone();
                for (name, value) in params {
                    rendered = rendered.replace(&format!("${{params.{name}}}"), value);
                }
                return Cow::Owned(rendered);
            }
        }
        Cow::Borrowed(&self.default)
    }

    /// The topic of the `${params}` route MQTT topic `topic` takes, when it takes one: checked
    /// that every value is a legal Kafka topic name part, the name not too long, and that the
    /// route's `topicPattern` allows it.
    pub fn routed_topic(&self, topic: &str) -> Option<Result<RoutedTopic, RouteRefusal>> {
        let (route, params) = self
            .routes
            .iter()
            .enumerate()
            .find_map(|(i, (pattern, _))| pattern.capture(topic).map(|params| (i, params)))?;
        let template = &self.routes[route].1;
        if !template.contains("${") {
            return None;
        }
        let check = &self.checks[route];
        let described = || check.filter.clone();
        let mut name = template.clone();
        for (param, value) in params {
            if value.is_empty() || !value.chars().all(is_topic_char) {
                return Some(Err(RouteRefusal::InvalidParam {
                    route: described(),
                    param: param.to_string(),
                    value: value.to_string(),
                }));
            }
            name = name.replace(&format!("${{params.{param}}}"), value);
        }
        if name.len() > MAX_TOPIC_NAME {
            return Some(Err(RouteRefusal::TooLong {
                route: described(),
                name,
            }));
        }
        if let Some((pattern, allowed)) = &check.allowed
            && !allowed.is_match(&name)
        {
            return Some(Err(RouteRefusal::NotAllowed {
                route: described(),
                name,
                pattern: pattern.clone(),
            }));
        }
        Some(Ok(RoutedTopic { name, route }))
    }

    /// Every messages topic whose name is known up front (the default and routes without
    /// parameters): the ones subscribers are served from.
    pub fn static_topics(&self) -> Vec<String> {
        let mut topics = vec![self.default.clone()];
        for (_, template) in &self.routes {
            if !template.contains("${") && !topics.contains(template) {
                topics.push(template.clone());
            }
        }
        topics
    }

    /// Whether Kafka topic `name` is one a route with `${params}` renders (each parameter
    /// stands for one non-empty MQTT topic level): such topics appear as clients publish, and
    /// subscribers are served from them too.
    pub fn is_routed_topic(&self, name: &str) -> bool {
        self.routes
            .iter()
            .any(|(_, template)| template.contains("${") && template_matches(template, name))
    }

    /// Whether some route renders its messages topic from `${params}`.
    pub fn has_param_routes(&self) -> bool {
        self.routes
            .iter()
            .any(|(_, template)| template.contains("${"))
    }

    /// The partition key of `topic` when a `clients` pattern matches it (its `{identity}`).
    pub fn hash_key<'t>(&self, topic: &'t str) -> Option<&'t str> {
        self.clients
            .iter()
            .find_map(|p| p.capture(topic))
            .and_then(|params| params.first().map(|(_, v)| *v))
    }
}

impl RouteCheck {
    fn new(route: &MqttKafkaRoute) -> Self {
        Self {
            filter: route.topic.clone(),
            // `KafkaConfig::check` refuses a pattern that does not compile.
            allowed: route.topic_pattern.as_ref().and_then(|pattern| {
                route_topic_pattern(pattern)
                    .ok()
                    .map(|regex| (pattern.clone(), regex))
            }),
        }
    }
}

/// Whether `name` is what `template` renders for some values of its `${params.x}` (each a
/// non-empty string without `/`).
fn template_matches(template: &str, name: &str) -> bool {
    let Some(start) = template.find("${") else {
        return template == name;
    };
    let Some(rest) = name.strip_prefix(&template[..start]) else {
        return false;
    };
    let Some(end) = template[start..].find('}') else {
        return false;
    };
    let after = &template[start + end + 1..];
    // The parameter takes 1..n characters of `rest`, then the remainder must match `after`.
    rest.char_indices()
        .skip(1)
        .map(|(i, _)| i)
        .chain([rest.len()])
        .filter(|i| *i > 0)
        .take_while(|i| !rest[..*i].contains('/'))
        .any(|i| template_matches(after, &rest[i..]))
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len() as u32;
    let mut h = SEED ^ length;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java client's default partitioner picks for `key`.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_test_vectors() {
        // org.apache.kafka.common.utils.UtilsTest#testMurmur2
        let cases: &[(&str, i32)] = &[
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ];
        for (input, want) in cases {
            assert_eq!(murmur2(input.as_bytes()), *want, "{input}");
        }
    }

    fn routing(routes: &[(&str, &str)], clients: &[&str]) -> Routing {
        let mut config = KafkaConfig::new("k:9092".into());
        for (topic, messages) in routes {
            config.routes.push(MqttKafkaRoute {
                topic: topic.to_string(),
                messages: messages.to_string(),
                ..Default::default()
            });
        }
        config.clients = clients.iter().map(|c| c.to_string()).collect();
        config.check().unwrap();
        Routing::new(&config)
    }

    #[test]
    fn routes_render_params_and_fall_back_to_the_default() {
        let r = routing(
            &[
                ("sensor/{id}/#", "sensors.${params.id}"),
                ("alerts/+", "alerts"),
            ],
            &[],
        );
        assert_eq!(r.messages_topic("sensor/7/temp"), "sensors.7");
        assert_eq!(r.messages_topic("sensor/7"), "sensors.7");
        assert_eq!(r.messages_topic("alerts/x"), "alerts");
        assert_eq!(r.messages_topic("alerts/x/y"), "mqtt-messages");
        assert_eq!(r.static_topics(), ["mqtt-messages", "alerts"]);
    }

    #[test]
    fn routed_topics_are_recognised_by_their_template() {
        let r = routing(
            &[
                ("sensor/{id}/#", "sensors.${params.id}"),
                ("site/{a}/{b}", "site-${params.a}-x-${params.b}"),
                ("alerts/+", "alerts"),
            ],
            &[],
        );
        assert!(r.has_param_routes());
        assert!(r.is_routed_topic("sensors.7"));
        assert!(r.is_routed_topic("site-1-x-2"));
        assert!(
            r.is_routed_topic("site-1-x-2-x-3"),
            "a level may contain the separator"
        );
        assert!(!r.is_routed_topic("sensors."), "a level is not empty");
        assert!(
            !r.is_routed_topic("alerts"),
            "static routes are read anyway"
        );
        assert!(!r.is_routed_topic("mqtt-messages"));
        assert!(!routing(&[("a/+", "a")], &[]).has_param_routes());
    }

    #[test]
    fn routed_topic_names_are_checked_before_any_topic_is_made() {
        let mut r = routing(
            &[
                ("sensors/{id}/#", "telemetry.${params.id}"),
                ("site/{a}/{b}", "site-${params.a}-${params.b}"),
                ("alerts/+", "alerts"),
            ],
            &[],
        );
        let ok = |name: &str, route| {
            Some(Ok(RoutedTopic {
                name: name.into(),
                route,
            }))
        };
        assert_eq!(
            r.routed_topic("sensors/dev-42/temp"),
            ok("telemetry.dev-42", 0)
        );
        assert_eq!(r.routed_topic("site/a_1/B.2"), ok("site-a_1-B.2", 1));
        assert_eq!(r.routed_topic("alerts/x"), None, "a static route");
        assert_eq!(r.routed_topic("other"), None, "the default topic");

        for (topic, value) in [
            ("sensors/dev 42/temp", "dev 42"),
            ("sensors/dév/temp", "dév"),
            ("sensors/a$b", "a$b"),
            ("sensors//temp", ""),
        ] {
            assert_eq!(
                r.routed_topic(topic),
                Some(Err(RouteRefusal::InvalidParam {
                    route: "sensors/{id}/#".into(),
                    param: "id".into(),
                    value: value.into(),
                })),
                "{topic}"
            );
        }
        let long = "x".repeat(240);
        assert!(matches!(
            r.routed_topic(&format!("sensors/{long}")),
            Some(Err(RouteRefusal::TooLong { .. }))
        ));
        let fits = "x".repeat(MAX_TOPIC_NAME - "telemetry.".len());
        assert!(matches!(
            r.routed_topic(&format!("sensors/{fits}")),
            Some(Ok(_))
        ));

        let mut config = KafkaConfig::new("k:9092".into());
        config.routes.push(MqttKafkaRoute {
            topic: "sensors/{id}/#".into(),
            messages: "telemetry.${params.id}".into(),
            topic_pattern: Some("telemetry\\.dev-[0-9]+".into()),
            ..Default::default()
        });
        config.check().unwrap();
        r = Routing::new(&config);
        assert_eq!(r.routed_topic("sensors/dev-7/t"), ok("telemetry.dev-7", 0));
        let refused = r.routed_topic("sensors/dev-7x/t").unwrap().unwrap_err();
        assert_eq!(
            refused.to_string(),
            "route \"sensors/{id}/#\": topic name \"telemetry.dev-7x\" does not match its \
             topicPattern \"telemetry\\\\.dev-[0-9]+\""
        );
    }

    #[test]
    fn client_patterns_pick_the_hash_key() {
        let r = routing(&[], &["place/{identity}/#"]);
        assert_eq!(r.hash_key("place/client-2/sensors/one"), Some("client-2"));
        assert_eq!(r.hash_key("other/client-2"), None);
    }
}
