//! Where a PUBLISH goes in Kafka: the messages topic (routes with `{params}`) and the partition
//! key (`clients` patterns), with the Java client's murmur2 partitioner.

use std::borrow::Cow;

use strait_config::mqtt_kafka::{KafkaConfig, MqttKafkaRoute};

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
    clients: Vec<Pattern>,
}

impl Routing {
    pub fn new(config: &KafkaConfig) -> Self {
        Self {
            default: config.topics.messages.clone(),
            routes: config
                .routes
                .iter()
                .map(|MqttKafkaRoute { topic, messages }| (Pattern::parse(topic), messages.clone()))
                .collect(),
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
    fn client_patterns_pick_the_hash_key() {
        let r = routing(&[], &["place/{identity}/#"]);
        assert_eq!(r.hash_key("place/client-2/sensors/one"), Some("client-2"));
        assert_eq!(r.hash_key("other/client-2"), None);
    }
}
