//! `Filter::covers` against a brute-force reference: a filter covers a
//! subscription exactly when every topic of a small universe that the
//! subscription matches, the filter matches too. The universe holds every
//! topic of up to five tokens over the tokens the filters use, a token
//! none of them names, and a `$` first token, which is enough to find a
//! counterexample whenever one exists for filters of up to four tokens.

use proptest::prelude::*;
use starling_protocol::{Filter, Topic};

/// Tokens a topic may have; `z` is named by no filter.
const TOPIC_TOKENS: [&str; 3] = ["a", "b", "z"];

fn universe() -> Vec<Topic> {
    let mut topics = Vec::new();
    let mut layer: Vec<Vec<&str>> = vec![vec!["$s"], vec!["a"], vec!["b"], vec!["z"]];
    for _ in 0..5 {
        let mut next = Vec::new();
        for tokens in &layer {
            topics.push(Topic::new(&tokens.join(".")).unwrap());
            for token in TOPIC_TOKENS {
                let mut longer = tokens.clone();
                longer.push(token);
                next.push(longer);
            }
        }
        layer = next;
    }
    topics
}

/// A filter of one to four tokens: literals, `*`, a `$` literal first, and
/// `>` last.
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
            Filter::new(&tokens.join(".")).unwrap()
        })
}

fn covers_by_brute_force(outer: &Filter, inner: &Filter, universe: &[Topic]) -> bool {
    universe
        .iter()
        .all(|topic| !inner.matches(topic.as_str()) || outer.matches(topic.as_str()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn covers_agrees_with_brute_force(outer in filter(), inner in filter()) {
        let universe = universe();
        prop_assert_eq!(
            outer.covers(&inner),
            covers_by_brute_force(&outer, &inner, &universe),
            "{} covers {}", outer, inner
        );
    }

    #[test]
    fn every_filter_covers_itself(filter in filter()) {
        prop_assert!(filter.covers(&filter));
    }
}
