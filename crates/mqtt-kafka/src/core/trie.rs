//! Which sessions a topic name reaches: a trie of topic filters, one level per node, so matching
//! a name costs its levels, not the number of subscriptions.

use std::collections::HashMap;

#[derive(Debug)]
struct Node<T> {
    children: HashMap<String, Node<T>>,
    /// Entries whose filter ends here.
    here: Vec<T>,
    /// Entries whose filter has `#` here.
    rest: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            here: Vec::new(),
            rest: Vec::new(),
        }
    }
}

/// Topic filters (`+`, `#`) with a value each; a filter may hold many values.
#[derive(Debug)]
pub struct Trie<T> {
    root: Node<T>,
    len: usize,
}

impl<T> Default for Trie<T> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T: PartialEq + Clone> Trie<T> {
    /// Adds `value` under `filter` (a valid MQTT topic filter, not a shared one).
    pub fn insert(&mut self, filter: &str, value: T) {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            if level == "#" {
                node.rest.push(value);
                self.len += 1;
                return;
            }
            node = node.children.entry(level.to_string()).or_default();
        }
        node.here.push(value);
        self.len += 1;
    }

    /// Removes one `value` from `filter`; `false` when it was not there.
    pub fn remove(&mut self, filter: &str, value: &T) -> bool {
        fn go<T: PartialEq>(node: &mut Node<T>, levels: &[&str], value: &T) -> bool {
            let list = match levels {
                [] => &mut node.here,
                ["#"] => &mut node.rest,
                [first, rest @ ..] => {
                    let Some(child) = node.children.get_mut(*first) else {
                        return false;
                    };
                    let removed = go(child, rest, value);
                    if child.children.is_empty() && child.here.is_empty() && child.rest.is_empty() {
                        node.children.remove(*first);
                    }
                    return removed;
                }
            };
            match list.iter().position(|v| v == value) {
                Some(i) => {
                    list.swap_remove(i);
                    true
                }
                None => false,
            }
        }
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = go(&mut self.root, &levels, value);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Calls `found` for every value whose filter matches the topic `name`. A value is reported
    /// once per matching filter. Wildcards in the first level do not match names starting with
    /// `$` (MQTT-4.7.2-1).
    pub fn matches(&self, name: &str, mut found: impl FnMut(&T)) {
        fn go<T>(
            node: &Node<T>,
            levels: &[&str],
            first: bool,
            dollar: bool,
            found: &mut impl FnMut(&T),
        ) {
            let wild = !(first && dollar);
            if wild {
                node.rest.iter().for_each(&mut *found);
            }
            let Some((level, rest)) = levels.split_first() else {
                node.here.iter().for_each(&mut *found);
                return;
            };
            if let Some(child) = node.children.get(*level) {
                go(child, rest, false, dollar, found);
            }
            if wild && let Some(child) = node.children.get("+") {
                go(child, rest, false, dollar, found);
            }
        }
        let levels: Vec<&str> = name.split('/').collect();
        go(&self.root, &levels, true, name.starts_with('$'), &mut found);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn matching(trie: &Trie<u32>, name: &str) -> Vec<u32> {
        let mut found = Vec::new();
        trie.matches(name, |v| found.push(*v));
        found.sort();
        found
    }

    #[test]
    fn wildcards_match_like_the_spec_says() {
        let mut trie = Trie::default();
        for (i, filter) in ["a/b", "a/+", "a/#", "#", "+/+", "a/b/c", "+", "/+"]
            .iter()
            .enumerate()
        {
            trie.insert(filter, i as u32);
        }
        assert_eq!(matching(&trie, "a/b"), [0, 1, 2, 3, 4]);
        assert_eq!(
            matching(&trie, "a"),
            [2, 3, 6],
            "a/# matches its parent level"
        );
        assert_eq!(matching(&trie, "a/b/c"), [2, 3, 5]);
        assert_eq!(matching(&trie, "/x"), [3, 4, 7]);
        assert_eq!(trie.len(), 8);
    }

    #[test]
    fn dollar_topics_escape_first_level_wildcards() {
        let mut trie = Trie::default();
        trie.insert("#", 1);
        trie.insert("+/x", 2);
        trie.insert("$SYS/#", 3);
        trie.insert("$SYS/+", 4);
        assert_eq!(matching(&trie, "$SYS/x"), [3, 4]);
        assert_eq!(matching(&trie, "s/x"), [1, 2]);
    }

    #[test]
    fn removing_leaves_the_others() {
        let mut trie = Trie::default();
        trie.insert("a/+", 1);
        trie.insert("a/+", 2);
        trie.insert("a/#", 1);
        assert!(trie.remove("a/+", &1));
        assert!(!trie.remove("a/+", &1));
        assert_eq!(matching(&trie, "a/b"), [1, 2]);
        assert!(trie.remove("a/#", &1));
        assert!(trie.remove("a/+", &2));
        assert!(trie.is_empty());
        assert!(trie.root.children.is_empty(), "empty nodes are pruned");
    }

    proptest! {
        #[test]
        fn the_trie_agrees_with_the_codecs_matcher(
            filters in prop::collection::vec(
                prop::collection::vec(prop::sample::select(vec!["a", "b", "+", "$s", ""]), 1..4)
                    .prop_flat_map(|levels| (Just(levels), any::<bool>()))
                    .prop_map(|(mut levels, hash)| {
                        if hash { levels.push("#"); }
                        levels.join("/")
                    }),
                1..8),
            name in prop::collection::vec(prop::sample::select(vec!["a", "b", "$s", ""]), 1..5)
                .prop_map(|l| l.join("/")),
        ) {
            let mut trie = Trie::default();
            for (i, filter) in filters.iter().enumerate() {
                trie.insert(filter, i as u32);
            }
            let expected: Vec<u32> = filters
                .iter()
                .enumerate()
                .filter(|(_, f)| strait_mqtt_codec::topic::matches(f, &name))
                .map(|(i, _)| i as u32)
                .collect();
            prop_assert_eq!(matching(&trie, &name), expected);
        }
    }
}
