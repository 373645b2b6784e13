//! Topic permissions as plain logic: which topics a client may publish to and which filters it
//! may subscribe to, given the filters its token or the ACL grants and denies. Shared by r-proxy
//! (every PUBLISH and SUBSCRIBE) and s-proxy (a persistent session's restored subscriptions).

use crate::v1;

/// The topic filters a client was granted and denied, per action; an allow list of `None` means
/// the action is not restricted (no claim configured, no ACL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Option<Vec<String>>,
    pub subscribe: Option<Vec<String>>,
    /// Topics refused even when `publish` covers them.
    pub deny_publish: Vec<String>,
    /// Subscriptions overlapping one of these are refused even when `subscribe` covers them.
    pub deny_subscribe: Vec<String>,
}

/// The placeholder a permission filter may use for the client's id.
pub const CLIENT_ID: &str = "{clientId}";
/// The placeholder a permission filter may use for the client's verified user name.
pub const USERNAME: &str = "{username}";

impl Permissions {
    /// Whether the client may publish to `topic` (a topic name, no wildcards).
    pub fn may_publish(&self, topic: &str) -> bool {
        if self.deny_publish.iter().any(|d| filter_covers(d, topic)) {
            return false;
        }
        match &self.publish {
            None => true,
            Some(granted) => {
                is_valid_topic(topic) && granted.iter().any(|p| filter_covers(p, topic))
            }
        }
    }

    /// Whether the client may subscribe to `filter`: some granted filter must match every topic
    /// the subscription can match, and no denied filter any. A shared subscription
    /// `$share/GROUP/FILTER` is judged by `FILTER`.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        let filter = unshare(filter);
        if self
            .deny_subscribe
            .iter()
            .any(|d| filters_overlap(d, filter))
        {
            return false;
        }
        match &self.subscribe {
            None => true,
            Some(granted) => {
                is_valid_filter(filter) && granted.iter().any(|p| filter_covers(p, filter))
            }
        }
    }

    /// Whether neither action is restricted.
    pub fn is_unrestricted(&self) -> bool {
        self.publish.is_none()
            && self.subscribe.is_none()
            && self.deny_publish.is_empty()
            && self.deny_subscribe.is_empty()
    }

    /// The subscribe half, as s-proxy receives it in `SessionOpen`.
    pub fn subscribe_grant(&self) -> v1::TopicGrant {
        v1::TopicGrant {
            allow_any: self.subscribe.is_none(),
            allow: self.subscribe.clone().unwrap_or_default(),
            deny: self.deny_subscribe.clone(),
        }
    }
}

/// Every set of permissions a session is subject to (its token's, the ACL's): a topic must pass
/// all of them. Empty: unrestricted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy(pub Vec<Permissions>);

impl Policy {
    pub fn may_publish(&self, topic: &str) -> bool {
        self.0.iter().all(|p| p.may_publish(topic))
    }

    pub fn may_subscribe(&self, filter: &str) -> bool {
        self.0.iter().all(|p| p.may_subscribe(filter))
    }

    pub fn is_unrestricted(&self) -> bool {
        self.0.iter().all(Permissions::is_unrestricted)
    }

    /// What s-proxy needs to re-check restored subscriptions.
    pub fn subscribe_grants(&self) -> Vec<v1::TopicGrant> {
        self.0
            .iter()
            .filter(|p| p.subscribe.is_some() || !p.deny_subscribe.is_empty())
            .map(Permissions::subscribe_grant)
            .collect()
    }

    /// The subscribe policy r-proxy sent in `SessionOpen` (publishing left unrestricted).
    pub fn from_subscribe_grants(grants: &[v1::TopicGrant]) -> Self {
        Self(
            grants
                .iter()
                .map(|g| Permissions {
                    subscribe: (!g.allow_any).then(|| g.allow.clone()),
                    deny_subscribe: g.deny.clone(),
                    ..Default::default()
                })
                .collect(),
        )
    }
}

/// The values of the placeholders a permission filter may use; `None` when the session has no
/// such value (no verified user name).
#[derive(Debug, Clone, Copy)]
pub struct Placeholders<'a> {
    pub client_id: Option<&'a str>,
    pub username: Option<&'a str>,
}

impl Placeholders<'_> {
    /// Replaces the placeholders in granted filters. A filter is dropped when a placeholder it
    /// uses has no value, or one that could widen it (holding `/`, `+` or `#`, or empty).
    pub fn allow(&self, filters: impl IntoIterator<Item = String>) -> Vec<String> {
        filters
            .into_iter()
            .filter_map(|f| self.substitute(&f))
            .collect()
    }

    /// Replaces the placeholders in denied filters. Where a placeholder has no safe value its
    /// level becomes `+`, so the deny widens rather than vanishes.
    pub fn deny(&self, filters: impl IntoIterator<Item = String>) -> Vec<String> {
        filters
            .into_iter()
            .map(|f| {
                self.substitute(&f).unwrap_or_else(|| {
                    f.split('/')
                        .map(|level| if level.contains('{') { "+" } else { level })
                        .collect::<Vec<_>>()
                        .join("/")
                })
            })
            .collect()
    }

    fn substitute(&self, filter: &str) -> Option<String> {
        let mut out = filter.to_string();
        for (placeholder, value) in [(CLIENT_ID, self.client_id), (USERNAME, self.username)] {
            if out.contains(placeholder) {
                out = out.replace(placeholder, value.filter(|v| is_safe_level(v))?);
            }
        }
        Some(out)
    }
}

fn is_safe_level(value: &str) -> bool {
    !value.is_empty() && !value.contains(['/', '+', '#'])
}

/// Whether some topic matches both filters (so a subscription to one can receive what the other
/// denies).
pub fn filters_overlap(a: &str, b: &str) -> bool {
    if !is_valid_filter(a) || !is_valid_filter(b) {
        return false;
    }
    let mut a = a.split('/');
    let mut b = b.split('/');
    let mut first = true;
    loop {
        match (a.next(), b.next()) {
            (Some("#"), other) | (other, Some("#")) => {
                // A leading wildcard does not reach `$` topics.
                return !(first && other.is_some_and(|l| l.starts_with('$')));
            }
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(x), Some(y)) => {
                let wild = |l: &str, other: &str| l == "+" && !(first && other.starts_with('$'));
                if x != y && !wild(x, y) && !wild(y, x) {
                    return false;
                }
            }
        }
        first = false;
    }
}

fn unshare(filter: &str) -> &str {
    match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or("", |(_, f)| f),
        None => filter,
    }
}

fn is_valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#'])
}

fn is_valid_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i == levels.len() - 1,
        "+" => true,
        other => !other.contains(['+', '#']),
    })
}

/// Whether every topic matched by `filter` (a topic filter or a topic name) is also matched by
/// the permission filter `granted`. Follows MQTT matching: `#` also matches its parent level,
/// `+` one level, and a wildcard in the first level does not match topics starting with `$`.
pub fn filter_covers(granted: &str, filter: &str) -> bool {
    if !is_valid_filter(granted) {
        return false;
    }
    let mut g = granted.split('/');
    let mut f = filter.split('/');
    let mut first = true;
    loop {
        match (g.next(), f.next()) {
            // `#` covers this level and everything below, wildcards included; in the first
            // level it does not reach `$` topics.
            (Some("#"), Some(level)) => return !(first && level.starts_with('$')),
            // `a/#` matches `a` itself.
            (Some("#"), None) => return true,
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(level)) => {
                if first && level.starts_with('$') {
                    return false;
                }
            }
            (Some(g), Some(level)) => {
                if g != level {
                    return false;
                }
            }
            (None, None) => return true,
            // One is longer: the filter matches topics the grant does not, or the reverse.
            (None, Some(_)) | (Some(_), None) => return false,
        }
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(filters: &[&str]) -> Permissions {
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        Permissions {
            publish: Some(filters.clone()),
            subscribe: Some(filters),
            ..Default::default()
        }
    }

    #[test]
    fn publish_topics_match_granted_filters() {
        let p = grant(&["devices/d1/#", "shared/+/status", "exact"]);
        for allowed in [
            "devices/d1",
            "devices/d1/x",
            "devices/d1/x/y",
            "shared/a/status",
            "exact",
        ] {
            assert!(p.may_publish(allowed), "{allowed}");
        }
        for denied in [
            "devices/d2/x",
            "devices",
            "shared/a/b/status",
            "shared/status",
            "exact/more",
            "exac",
            "",
            "devices/d1/+",
        ] {
            assert!(!p.may_publish(denied), "{denied}");
        }
    }

    #[test]
    fn subscription_is_granted_only_when_a_grant_covers_all_it_matches() {
        let p = grant(&["a/#", "b/+/c", "d/+"]);
        for allowed in [
            "a", "a/#", "a/+", "a/+/x/#", "a/x", "b/+/c", "b/x/c", "d/+", "d/x",
        ] {
            assert!(p.may_subscribe(allowed), "{allowed}");
        }
        for denied in [
            "#", "+", "+/x", "b/#", "b/+/+", "b/x/#", "d/#", "d", "d/+/x", "e", "a/#/x", "",
        ] {
            assert!(!p.may_subscribe(denied), "{denied}");
        }
    }

    #[test]
    fn plus_grant_does_not_cover_a_multi_level_subscription() {
        assert!(filter_covers("a/+", "a/b"));
        assert!(filter_covers("a/+", "a/+"));
        assert!(!filter_covers("a/+", "a/#"), "a/# also matches a and a/b/c");
        assert!(!filter_covers("a/+/#", "a/#"), "a/# also matches a");
        assert!(filter_covers("a/+/#", "a/b/#"));
        assert!(filter_covers("#", "a/b/#"));
    }

    #[test]
    fn leading_wildcards_do_not_reach_dollar_topics() {
        let p = grant(&["#", "+/status"]);
        assert!(!p.may_publish("$SYS/status"));
        assert!(!p.may_subscribe("$SYS/#"));
        assert!(
            p.may_subscribe("#"),
            "a `#` subscription itself skips $ topics"
        );
        assert!(grant(&["$SYS/#"]).may_subscribe("$SYS/broker/+"));
    }

    #[test]
    fn shared_subscriptions_are_judged_by_their_filter() {
        let p = grant(&["jobs/#"]);
        assert!(p.may_subscribe("$share/workers/jobs/+"));
        assert!(!p.may_subscribe("$share/workers/other/+"));
        assert!(!p.may_subscribe("$share/workers"));
    }

    #[test]
    fn unrestricted_and_empty_grants() {
        let open = Permissions::default();
        assert!(open.may_publish("any/topic") && open.may_subscribe("#"));
        let none = grant(&[]);
        assert!(!none.may_publish("any") && !none.may_subscribe("any"));
        assert!(
            !grant(&["a/#/b"]).may_publish("a/x/b"),
            "invalid grant matches nothing"
        );
    }

    #[test]
    fn placeholders_are_substituted_only_when_safe() {
        let granted =
            || ["devices/{clientId}/#", "users/{username}/#", "public/#"].map(String::from);
        let values = Placeholders {
            client_id: Some("d1"),
            username: Some("alice"),
        };
        assert_eq!(
            values.allow(granted()),
            ["devices/d1/#", "users/alice/#", "public/#"]
        );
        for unsafe_id in ["+", "#", "a/b", ""] {
            let values = Placeholders {
                client_id: Some(unsafe_id),
                username: None,
            };
            assert_eq!(values.allow(granted()), ["public/#"], "{unsafe_id:?}");
            assert_eq!(
                values.deny(granted()),
                ["devices/+/#", "users/+/#", "public/#"],
                "a deny widens instead"
            );
        }
    }

    #[test]
    fn denied_filters_win_over_granted_ones() {
        let p = Permissions {
            publish: None,
            subscribe: Some(vec!["a/#".into()]),
            deny_publish: vec!["a/secret/#".into()],
            deny_subscribe: vec!["a/secret/#".into(), "+/private".into()],
        };
        assert!(p.may_publish("a/x") && !p.may_publish("a/secret/k"));
        assert!(p.may_subscribe("a/public/+"));
        for denied in ["a/#", "a/+/k", "a/secret", "a/private", "b/#"] {
            assert!(!p.may_subscribe(denied), "{denied}");
        }
    }

    #[test]
    fn overlapping_filters() {
        for (a, b) in [
            ("a/#", "a"),
            ("a/+", "+/b"),
            ("#", "x/y"),
            ("a/+/c", "a/b/#"),
        ] {
            assert!(filters_overlap(a, b) && filters_overlap(b, a), "{a} {b}");
        }
        for (a, b) in [
            ("a/+", "a"),
            ("a/b", "a/c"),
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
        ] {
            assert!(!filters_overlap(a, b) && !filters_overlap(b, a), "{a} {b}");
        }
    }

    #[test]
    fn policies_require_every_grant_and_travel_as_subscribe_grants() {
        let token = Permissions {
            subscribe: Some(vec!["a/#".into()]),
            ..Default::default()
        };
        let acl = Permissions {
            subscribe: Some(vec!["a/b/#".into(), "c/#".into()]),
            deny_subscribe: vec!["a/b/x".into()],
            ..Default::default()
        };
        let policy = Policy(vec![token, acl]);
        assert!(policy.may_subscribe("a/b/y"));
        assert!(!policy.may_subscribe("c/d"), "the token does not allow it");
        assert!(!policy.may_subscribe("a/b/+"), "overlaps the denied a/b/x");
        assert!(policy.may_publish("anything"));
        let restored = Policy::from_subscribe_grants(&policy.subscribe_grants());
        for filter in ["a/b/y", "c/d", "a/b/+", "a/#"] {
            assert_eq!(
                restored.may_subscribe(filter),
                policy.may_subscribe(filter),
                "{filter}"
            );
        }
        assert!(Policy::default().may_subscribe("#") && Policy::default().is_unrestricted());
    }
}
