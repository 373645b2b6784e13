//! Topic permissions as plain logic: which topics a client may publish to and which filters it
//! may subscribe to, given the permission filters its token grants.

/// The topic filters a client was granted, per action; `None` means the action is not
/// restricted (the claim is not configured).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Option<Vec<String>>,
    pub subscribe: Option<Vec<String>>,
}

/// The placeholder a permission filter may use for the client's id.
pub const CLIENT_ID: &str = "{clientId}";

impl Permissions {
    /// Whether the client may publish to `topic` (a topic name, no wildcards).
    pub fn may_publish(&self, topic: &str) -> bool {
        match &self.publish {
            None => true,
            Some(granted) => {
                is_valid_topic(topic) && granted.iter().any(|p| filter_covers(p, topic))
            }
        }
    }

    /// Whether the client may subscribe to `filter`: some granted filter must match every topic
    /// the subscription can match. A shared subscription `$share/GROUP/FILTER` is judged by
    /// `FILTER`.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        match &self.subscribe {
            None => true,
            Some(granted) => {
                let filter = unshare(filter);
                is_valid_filter(filter) && granted.iter().any(|p| filter_covers(p, filter))
            }
        }
    }
}

/// Replaces `{clientId}` in granted filters. A filter using the placeholder is dropped when the
/// client id could widen it (it holds `/`, `+` or `#`, or is empty).
pub fn substitute_client_id(filters: Vec<String>, client_id: &str) -> Vec<String> {
    let safe = !client_id.is_empty() && !client_id.contains(['/', '+', '#']);
    filters
        .into_iter()
        .filter_map(|f| {
            if !f.contains(CLIENT_ID) {
                Some(f)
            } else if safe {
                Some(f.replace(CLIENT_ID, client_id))
            } else {
                None
            }
        })
        .collect()
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
    fn client_id_placeholder_is_substituted_only_when_safe() {
        let granted = vec!["devices/{clientId}/#".to_string(), "public/#".to_string()];
        assert_eq!(
            substitute_client_id(granted.clone(), "d1"),
            ["devices/d1/#", "public/#"]
        );
        for unsafe_id in ["+", "#", "a/b", ""] {
            assert_eq!(
                substitute_client_id(granted.clone(), unsafe_id),
                ["public/#"],
                "{unsafe_id:?}"
            );
        }
    }
}
