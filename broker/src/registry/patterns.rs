//! Pattern subscriptions indexed by their tokens, so that finding the
//! patterns a topic matches costs what matches, not every pattern.
//!
//! A trie keyed by the dot-separated tokens of each filter: a node has a
//! child per literal token, one child for `*`, the pattern that ends there
//! and the pattern that ends there with `>`. A topic walks the literal child
//! of each of its tokens and every `*` child on the way, so a lookup visits
//! only the prefixes that fit the topic, however many other patterns there
//! are.
//! Matching is [`Filter::matches`], exactly, including its one exception: a
//! filter whose first token is a wildcard matches no reserved (`$…`) topic.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::str::Split;

use starling_protocol::Filter;

/// Values keyed by filter, found by the topics the filters match.
#[derive(Debug)]
pub(crate) struct PatternIndex<V> {
    root: Node<V>,
    len: usize,
}

#[derive(Debug)]
struct Node<V> {
    /// The next token as written.
    literals: HashMap<Box<str>, Node<V>>,
    /// The next token is `*`.
    star: Option<Box<Node<V>>>,
    /// The filter ends here.
    end: Option<(Filter, V)>,
    /// The filter ends here with `>`: one or more tokens follow.
    tail: Option<(Filter, V)>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            literals: HashMap::new(),
            star: None,
            end: None,
            tail: None,
        }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.end.is_none() && self.tail.is_none() && self.star.is_none() && self.literals.is_empty()
    }

    /// The slot of the filter whose remaining tokens are `tokens`, with
    /// the nodes on the way made when missing.
    fn slot(&mut self, mut tokens: Split<'_, char>) -> &mut Option<(Filter, V)> {
        match tokens.next() {
            None => &mut self.end,
            // Only ever last: `Filter` refuses `>` elsewhere.
            Some(">") => &mut self.tail,
            Some("*") => self.star.get_or_insert_with(Default::default).slot(tokens),
            Some(literal) => self
                .literals
                .entry(literal.into())
                .or_default()
                .slot(tokens),
        }
    }

    fn find(&self, mut tokens: Split<'_, char>) -> Option<&(Filter, V)> {
        match tokens.next() {
            None => self.end.as_ref(),
            Some(">") => self.tail.as_ref(),
            Some("*") => self.star.as_deref()?.find(tokens),
            Some(literal) => self.literals.get(literal)?.find(tokens),
        }
    }

    /// Takes the filter out when `remove` says so, and prunes the nodes it
    /// leaves empty below this one.
    fn take_if(
        &mut self,
        mut tokens: Split<'_, char>,
        remove: impl FnOnce(&mut V) -> bool,
    ) -> Option<(Filter, V)> {
        match tokens.next() {
            None => take_slot(&mut self.end, remove),
            Some(">") => take_slot(&mut self.tail, remove),
            Some("*") => {
                let star = self.star.as_deref_mut()?;
                let taken = star.take_if(tokens, remove);
                if star.is_empty() {
                    self.star = None;
                }
                taken
            }
            Some(literal) => {
                let child = self.literals.get_mut(literal)?;
                let taken = child.take_if(tokens, remove);
                if child.is_empty() {
                    self.literals.remove(literal);
                }
                taken
            }
        }
    }

    /// Calls `visit` with every filter here or below that matches the rest
    /// of a topic, `tokens`. `wildcards` is false at the root of a reserved
    /// topic, where neither `*` nor `>` may take its first token.
    fn walk<'a, B>(
        &'a self,
        mut tokens: Split<'_, char>,
        wildcards: bool,
        visit: &mut impl FnMut(&'a Filter, &'a V) -> ControlFlow<B>,
    ) -> ControlFlow<B> {
        let Some(token) = tokens.next() else {
            if let Some((filter, value)) = &self.end {
                visit(filter, value)?;
            }
            return ControlFlow::Continue(());
        };
        if wildcards {
            if let Some((filter, value)) = &self.tail {
                visit(filter, value)?;
            }
            if let Some(star) = &self.star {
                star.walk(tokens.clone(), true, visit)?;
            }
        }
        if let Some(child) = self.literals.get(token) {
            child.walk(tokens, true, visit)?;
        }
        ControlFlow::Continue(())
    }

    fn each<'a>(&'a self, visit: &mut impl FnMut(&'a Filter, &'a V)) {
        for (filter, value) in self.end.iter().chain(&self.tail) {
            visit(filter, value);
        }
        if let Some(star) = &self.star {
            star.each(visit);
        }
        for child in self.literals.values() {
            child.each(visit);
        }
    }
}

fn take_slot<V>(
    slot: &mut Option<(Filter, V)>,
    remove: impl FnOnce(&mut V) -> bool,
) -> Option<(Filter, V)> {
    let (_, value) = slot.as_mut()?;
    if remove(value) { slot.take() } else { None }
}

impl<V> Default for PatternIndex<V> {
    fn default() -> Self {
        PatternIndex {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<V> PatternIndex<V> {
    /// How many filters the index holds.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The value of `filter`, made by `make` when it has none; with the
    /// index's own copy of the filter.
    pub(crate) fn get_or_insert_with(
        &mut self,
        filter: &Filter,
        make: impl FnOnce() -> V,
    ) -> (&Filter, &mut V) {
        let slot = self.root.slot(filter.as_str().split('.'));
        let fresh = slot.is_none();
        let (filter, value) = slot.get_or_insert_with(|| (filter.clone(), make()));
        if fresh {
            self.len += 1;
        }
        (filter, value)
    }

    /// The value of `filter`.
    pub(crate) fn get(&self, filter: &Filter) -> Option<&V> {
        self.root
            .find(filter.as_str().split('.'))
            .map(|(_, value)| value)
    }

    /// Removes `filter` when `remove` says so, given its value (which it
    /// may change either way); returns what was removed.
    pub(crate) fn remove_if(
        &mut self,
        filter: &Filter,
        remove: impl FnOnce(&mut V) -> bool,
    ) -> Option<V> {
        let (_, value) = self.root.take_if(filter.as_str().split('.'), remove)?;
        self.len -= 1;
        Some(value)
    }

    /// Calls `visit` with each filter that matches `topic` (a valid topic)
    /// and its value, until `visit` breaks.
    pub(crate) fn try_for_each_match<'a, B>(
        &'a self,
        topic: &str,
        mut visit: impl FnMut(&'a Filter, &'a V) -> ControlFlow<B>,
    ) -> ControlFlow<B> {
        // As in `Filter::matches`: a leading wildcard never takes `$…`.
        let wildcards = !topic.starts_with('$');
        self.root.walk(topic.split('.'), wildcards, &mut visit)
    }

    /// Calls `visit` with each filter that matches `topic` and its value.
    pub(crate) fn for_each_match<'a>(
        &'a self,
        topic: &str,
        mut visit: impl FnMut(&'a Filter, &'a V),
    ) {
        let _ = self.try_for_each_match(topic, |filter, value| {
            visit(filter, value);
            ControlFlow::<()>::Continue(())
        });
    }

    /// Whether any filter matches `topic`.
    pub(crate) fn any_match(&self, topic: &str) -> bool {
        self.try_for_each_match(topic, |_, _| ControlFlow::Break(()))
            .is_break()
    }

    /// Calls `visit` with every filter and its value.
    pub(crate) fn for_each<'a>(&'a self, mut visit: impl FnMut(&'a Filter, &'a V)) {
        self.root.each(&mut visit);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use proptest::prelude::*;
    use starling_protocol::Topic;

    use super::*;

    fn f(name: &str) -> Filter {
        Filter::new(name).unwrap()
    }

    fn matching(index: &PatternIndex<usize>, topic: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        index.for_each_match(topic, |filter, _| {
            assert!(found.insert(filter.to_string()), "{filter} twice");
        });
        assert_eq!(index.any_match(topic), !found.is_empty(), "{topic}");
        found
    }

    fn brute_force<'a>(
        filters: impl IntoIterator<Item = &'a Filter>,
        topic: &str,
    ) -> BTreeSet<String> {
        filters
            .into_iter()
            .filter(|filter| filter.matches(topic))
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn matches_follow_the_table() {
        let patterns = [
            "*", ">", "a.*", "a.>", "*.b", "*.*", "*.*.>", "a.b.*", "a.*.c", "a.*.*", "a.b.>",
            "x.>", "$sys.*", "$sys.>", "*.stats", ">",
        ];
        let mut index = PatternIndex::default();
        for pattern in patterns {
            *index.get_or_insert_with(&f(pattern), || 0).1 += 1;
        }
        assert_eq!(index.len(), patterns.len() - 1);
        // (topic, the patterns it matches)
        let table: [(&str, &[&str]); 12] = [
            ("a", &["*", ">"]),
            ("b", &["*", ">"]),
            ("a.b", &[">", "a.*", "a.>", "*.b", "*.*"]),
            ("b.b", &[">", "*.b", "*.*"]),
            ("x.y", &[">", "*.*", "x.>"]),
            ("x", &["*", ">"]),
            (
                "a.b.c",
                &[">", "a.>", "*.*.>", "a.b.*", "a.*.c", "a.*.*", "a.b.>"],
            ),
            ("a.x.c.d", &[">", "a.>", "*.*.>"]),
            ("a.b.c.d.e.f", &[">", "a.>", "*.*.>", "a.b.>"]),
            // A leading wildcard takes no reserved topic.
            ("$sys.stats", &["$sys.*", "$sys.>"]),
            ("$sys", &[]),
            ("$sys.a.b", &["$sys.>"]),
        ];
        let all: Vec<Filter> = patterns.iter().copied().map(f).collect();
        for (topic, expected) in table {
            let expected: BTreeSet<String> = expected.iter().map(ToString::to_string).collect();
            assert_eq!(brute_force(&all, topic), expected, "the table, for {topic}");
            assert_eq!(matching(&index, topic), expected, "{topic}");
        }
    }

    #[test]
    fn removal_keeps_counts_and_prunes() {
        let mut index = PatternIndex::default();
        let pattern = f("a.*.c.>");
        let (first, _) = index.get_or_insert_with(&pattern, || 1);
        let first = first.clone();
        // A second insert finds the first copy and leaves the value.
        let (again, value) = index.get_or_insert_with(&f("a.*.c.>"), || 7);
        assert!(Arc::ptr_eq(first.as_arc(), again.as_arc()));
        assert_eq!(*value, 1);
        *index.get_or_insert_with(&f("a.*"), || 0).1 += 1;
        assert_eq!((index.len(), index.get(&pattern)), (2, Some(&1)));
        assert_eq!(index.remove_if(&pattern, |_| false), None);
        assert_eq!(index.remove_if(&f("a.*.c"), |_| true), None);
        assert_eq!(index.remove_if(&pattern, |_| true), Some(1));
        assert_eq!((index.len(), index.get(&pattern)), (1, None));
        assert_eq!(matching(&index, "a.b.c.d"), BTreeSet::new());
        assert_eq!(index.remove_if(&f("a.*"), |_| true), Some(1));
        assert!(index.root.is_empty());
    }

    #[test]
    fn for_each_visits_every_filter_once() {
        let mut index = PatternIndex::default();
        let names = ["a.*", "a.>", "*", ">", "a.*.b", "$s.*"];
        for name in names {
            index.get_or_insert_with(&f(name), || 0);
        }
        let mut seen = Vec::new();
        index.for_each(|filter, _| seen.push(filter.to_string()));
        seen.sort();
        let mut names = names.map(String::from).to_vec();
        names.sort();
        assert_eq!(seen, names);
    }

    /// A filter of one to four tokens: literals, `*`, a `$` literal first,
    /// and `>` last; sometimes a plain topic.
    fn filter() -> impl Strategy<Value = Filter> {
        let token = prop_oneof![Just("a"), Just("b"), Just("*")];
        (
            prop_oneof![Just("a"), Just("b"), Just("*"), Just(">"), Just("$s")],
            proptest::collection::vec(token, 0..3),
            any::<bool>(),
        )
            .prop_map(|(first, middle, wide)| {
                let mut tokens = vec![first];
                if first != ">" {
                    tokens.extend(middle);
                    if wide {
                        tokens.push(">");
                    }
                }
                f(&tokens.join("."))
            })
    }

    /// A topic of one to five tokens, `z` being named by no filter.
    fn topic() -> impl Strategy<Value = Topic> {
        (
            prop_oneof![Just("a"), Just("b"), Just("z"), Just("$s")],
            proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("z")], 0..5),
        )
            .prop_map(|(first, rest)| {
                let mut tokens = vec![first];
                tokens.extend(rest);
                Topic::new(&tokens.join(".")).unwrap()
            })
    }

    #[derive(Debug, Clone)]
    enum Op {
        Subscribe(Filter),
        Unsubscribe(Filter),
        Publish(Topic),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => filter().prop_map(Op::Subscribe),
            2 => filter().prop_map(Op::Unsubscribe),
            3 => topic().prop_map(Op::Publish),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Through subscribes and unsubscribes, each topic finds exactly the
        /// filters that `Filter::matches` picks among those subscribed.
        #[test]
        fn index_agrees_with_a_scan(ops in proptest::collection::vec(op(), 0..60)) {
            let mut index = PatternIndex::default();
            // Filter -> subscribers, as the registry counts them.
            let mut model: BTreeMap<Filter, usize> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Subscribe(filter) => {
                        *index.get_or_insert_with(&filter, || 0).1 += 1;
                        *model.entry(filter).or_default() += 1;
                    }
                    Op::Unsubscribe(filter) => {
                        let removed = index.remove_if(&filter, |n| {
                            *n -= 1;
                            *n == 0
                        });
                        let expected = match model.get_mut(&filter) {
                            Some(n) if *n == 1 => model.remove(&filter),
                            Some(n) => {
                                *n -= 1;
                                None
                            }
                            None => None,
                        };
                        prop_assert_eq!(removed.is_some(), expected.is_some());
                    }
                    Op::Publish(topic) => {
                        prop_assert_eq!(
                            matching(&index, topic.as_str()),
                            brute_force(model.keys(), topic.as_str()),
                            "{}", topic
                        );
                    }
                }
                prop_assert_eq!(index.len(), model.len());
            }
            for (filter, n) in &model {
                prop_assert_eq!(index.get(filter), Some(n));
            }
            for filter in model.keys().cloned().collect::<Vec<_>>() {
                prop_assert!(index.remove_if(&filter, |_| true).is_some());
            }
            prop_assert!(index.root.is_empty());
        }
    }
}
