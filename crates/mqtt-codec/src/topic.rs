//! Topic names, topic filters, shared subscriptions and matching (spec §4.7, §4.8.2).
//!
//! Topic names are what PUBLISH carries (no wildcards); topic filters are what
//! SUBSCRIBE carries (`+` for one level, `#` for the rest).

/// Why a topic name or filter is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("empty")]
    Empty,
    #[error("longer than 65535 bytes")]
    TooLong,
    #[error("contains U+0000")]
    NullCharacter,
    /// `+` or `#` in a topic name.
    #[error("topic name contains a wildcard")]
    WildcardInName,
    /// `#` not alone in the last level, or `+` not alone in its level.
    #[error("misplaced wildcard")]
    MisplacedWildcard,
    /// `$share/{group}/…` with an empty group or one containing a wildcard.
    #[error("invalid share name")]
    InvalidShareName,
    /// `$share/{group}` with no filter after the group.
    #[error("shared subscription without a topic filter")]
    MissingSharedFilter,
}

const SHARE_PREFIX: &str = "$share/";

/// Checks a topic name: non-empty, at most 65535 bytes, no U+0000, no wildcard.
///
/// An MQTT 5 PUBLISH may carry an empty topic name together with a Topic
/// Alias; the decoder handles that case before calling this.
pub fn validate_name(name: &str) -> Result<(), TopicError> {
    check_length(name)?;
    for b in name.bytes() {
        match b {
            0 => return Err(TopicError::NullCharacter),
            b'+' | b'#' => return Err(TopicError::WildcardInName),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a topic filter, including the `$share/{group}/{filter}` form.
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    check_length(filter)?;
    if filter.as_bytes().contains(&0) {
        return Err(TopicError::NullCharacter);
    }
    match filter.strip_prefix(SHARE_PREFIX) {
        Some(rest) => {
            let (group, filter) = rest
                .split_once('/')
                .ok_or(TopicError::MissingSharedFilter)?;
            if group.is_empty() || group.contains(['+', '#']) {
                return Err(TopicError::InvalidShareName);
            }
            if filter.is_empty() {
                return Err(TopicError::MissingSharedFilter);
            }
            check_levels(filter)
        }
        None => check_levels(filter),
    }
}

fn check_length(topic: &str) -> Result<(), TopicError> {
    match topic.len() {
        0 => Err(TopicError::Empty),
        1..=65535 => Ok(()),
        _ => Err(TopicError::TooLong),
    }
}

fn check_levels(filter: &str) -> Result<(), TopicError> {
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let misplaced_hash = level.contains('#') && (level != "#" || levels.peek().is_some());
        let misplaced_plus = level.contains('+') && level != "+";
        if misplaced_hash || misplaced_plus {
            return Err(TopicError::MisplacedWildcard);
        }
    }
    Ok(())
}

/// Splits a shared subscription `$share/{group}/{filter}` into `(group, filter)`.
///
/// `None` when `filter` is not a shared subscription. This only splits; call
/// [`validate_filter`] first (the decoder already did for received filters).
pub fn parse_shared(filter: &str) -> Option<(&str, &str)> {
    filter.strip_prefix(SHARE_PREFIX)?.split_once('/')
}

/// Whether topic name `name` matches topic filter `filter`.
///
/// Follows spec §4.7: `#` also matches the parent level (`a/#` matches `a`),
/// `+` matches exactly one (possibly empty) level, and a filter starting with
/// a wildcard does not match names starting with `$` (e.g. `$SYS/…`).
/// `filter` must not be a shared subscription: strip it with [`parse_shared`].
/// Both arguments are assumed valid.
pub fn matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut name_levels = name.split('/');
    loop {
        match (filter_levels.next(), name_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(n)) if f == n => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(validate_name("a/b/c"), Ok(()));
        assert_eq!(validate_name("/"), Ok(()));
        assert_eq!(validate_name("$SYS/x"), Ok(()));
        assert_eq!(validate_name(""), Err(TopicError::Empty));
        assert_eq!(validate_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("a#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("a\0b"), Err(TopicError::NullCharacter));
        assert_eq!(validate_name(&"a".repeat(65536)), Err(TopicError::TooLong));
        assert_eq!(validate_name(&"a".repeat(65535)), Ok(()));
    }

    #[test]
    fn filters() {
        for ok in [
            "#",
            "+",
            "a/#",
            "a/+/b",
            "+/+",
            "/+",
            "a//b",
            "$SYS/#",
            "sport/tennis/+/#",
            "$share/g/a/#",
            "$share/g/#",
            "$share",
            "$sharex/+",
        ] {
            assert_eq!(validate_filter(ok), Ok(()), "{ok}");
        }
        for (bad, err) in [
            ("", TopicError::Empty),
            ("a/#/b", TopicError::MisplacedWildcard),
            ("a#", TopicError::MisplacedWildcard),
            ("a/b#", TopicError::MisplacedWildcard),
            ("a+", TopicError::MisplacedWildcard),
            ("a/+b/c", TopicError::MisplacedWildcard),
            ("##", TopicError::MisplacedWildcard),
            ("a\0", TopicError::NullCharacter),
            ("$share/g", TopicError::MissingSharedFilter),
            ("$share/g/", TopicError::MissingSharedFilter),
            ("$share//a", TopicError::InvalidShareName),
            ("$share/g+/a", TopicError::InvalidShareName),
            ("$share/#/a", TopicError::InvalidShareName),
            ("$share/g/a#", TopicError::MisplacedWildcard),
        ] {
            assert_eq!(validate_filter(bad), Err(err), "{bad}");
        }
    }

    #[test]
    fn shared() {
        assert_eq!(parse_shared("$share/g/a/b"), Some(("g", "a/b")));
        assert_eq!(parse_shared("$share/g/#"), Some(("g", "#")));
        assert_eq!(parse_shared("a/b"), None);
        assert_eq!(parse_shared("$share/g"), None);
        assert_eq!(parse_shared("$sharex/g/a"), None);
    }

    #[test]
    fn matching() {
        let cases = [
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/#", "sport", true),
            ("#", "a/b", true),
            ("#", "/", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("a/b", "A/b", false),
            ("#", "$SYS/x", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/monitor/Clients", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("a/+/c", "a//c", true),
        ];
        for (filter, name, expected) in cases {
            assert_eq!(matches(filter, name), expected, "{filter} vs {name}");
        }
    }
}
