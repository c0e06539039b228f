//! Presence requests and events, as a test sees them.

use starling_protocol::{Envelope, Filter, Member, Payload, Topic};

use crate::{Client, TestBroker};

/// Subscribes to `topic` as `name` with `info` (JSON); returns the answer.
pub async fn enter(
    client: &mut Client,
    topic: &str,
    name: Option<&str>,
    info: Option<&str>,
) -> Envelope {
    let id = client.next_id();
    client
        .request(&Envelope::Subscribe {
            id: Some(id),
            topic: Filter::new(topic).unwrap(),
            since: None,
            epoch: None,
            name: name.map(Into::into),
            info: info.map(|i| Payload::from_json(i).unwrap()),
        })
        .await
}

/// Asks for the presence of `topic`; returns the answer as it came.
pub async fn ask(client: &mut Client, topic: &str) -> Envelope {
    let id = client.next_id();
    client
        .request(&Envelope::Presence {
            id: Some(id),
            topic: Topic::new(topic).unwrap(),
            count: None,
            members: None,
        })
        .await
}

/// The answer to a `presence` request: the count and the members, by name.
pub async fn presence(client: &mut Client, topic: &str) -> (u64, Vec<Member>) {
    match ask(client, topic).await {
        Envelope::Presence {
            count: Some(count),
            members: Some(mut members),
            ..
        } => {
            members.sort_by(|a, b| a.name.cmp(&b.name));
            (count, members)
        }
        other => panic!("expected a presence answer, got {other:?}"),
    }
}

/// The count of a topic kept as counts only (its answer lists no members).
pub async fn count_only(client: &mut Client, topic: &str) -> u64 {
    match ask(client, topic).await {
        Envelope::Presence {
            count: Some(count),
            members: None,
            ..
        } => count,
        other => panic!("expected a count without members, got {other:?}"),
    }
}

/// Names and session counts, as [`members`] gives them.
pub type Listing = (u64, Vec<(String, u64)>);

/// The name and info (JSON) of a `join`.
pub fn join_of(frame: Envelope) -> (String, Option<String>) {
    match frame {
        Envelope::Join { member, .. } => (
            member.name.to_string(),
            member.info.map(|i| i.to_json_string()),
        ),
        other => panic!("expected a join, got {other:?}"),
    }
}

/// The name of a `leave`.
pub fn leave_of(frame: Envelope) -> String {
    match frame {
        Envelope::Leave { member, .. } => member.name.to_string(),
        other => panic!("expected a leave, got {other:?}"),
    }
}

/// A client of `broker` in `topic` as member `name`, whose own join it
/// has seen.
pub async fn watcher(broker: &TestBroker, topic: &str, name: &str) -> Client {
    let mut client = broker.json().await;
    enter(&mut client, topic, Some(name), None).await;
    assert_eq!(join_of(client.recv().await).0, name);
    client
}

/// The names and session counts of `topic`'s members, asked on `client`.
pub async fn members(client: &mut Client, topic: &str) -> Listing {
    let (count, members) = presence(client, topic).await;
    (count, names(members))
}

/// Members' names and session counts, by name.
pub fn names(mut members: Vec<Member>) -> Vec<(String, u64)> {
    members.sort_by(|a, b| a.name.cmp(&b.name));
    members
        .into_iter()
        .map(|m| (m.name.to_string(), m.sessions.unwrap_or(0)))
        .collect()
}
