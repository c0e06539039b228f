//! Presence against a real broker: members named by the client, `join` and
//! `leave` as events, and `Client::presence`.

mod common;

use common::wait_event;
use starling_client::{ConnectOptions, Error, ErrorCode, Event};
use starling_tests::{broker_with, stop};

#[tokio::test]
async fn members_join_and_leave_and_can_be_listed() {
    let broker = broker_with(|c| {
        c.presence_prefixes = vec!["chat.".into()];
        c.presence_grace_ms = 100;
    })
    .await;
    let watcher = ConnectOptions::new()
        .member("watcher")
        .connect(broker.ws_url())
        .await
        .unwrap();
    let mut events = watcher.events();
    let _room = watcher.subscribe("chat.lobby").await.unwrap();
    let name = |event: &Event, joined: bool| match event {
        Event::Join { topic, member } if joined && topic.as_str() == "chat.lobby" => {
            Some(member.clone())
        }
        Event::Leave { topic, member } if !joined && topic.as_str() == "chat.lobby" => {
            Some(member.clone())
        }
        _ => None,
    };
    let me = wait_event(&mut events, "own join", |e| name(e, true)).await;
    assert_eq!(me.name.as_ref(), "watcher");

    let ada = ConnectOptions::new()
        .member("ada")
        .info(&serde_json::json!({"status": "online"}))
        .unwrap()
        .connect(broker.ws_url())
        .await
        .unwrap();
    let sub = ada.subscribe("chat.lobby").await.unwrap();
    let joined = wait_event(&mut events, "ada's join", |e| name(e, true)).await;
    assert_eq!(joined.name.as_ref(), "ada");
    assert_eq!(
        joined.info.unwrap().to_json_string(),
        r#"{"status":"online"}"#
    );

    let room = watcher.presence("chat.lobby").await.unwrap();
    assert_eq!(room.count, 2);
    let mut names: Vec<&str> = room.members.iter().map(|m| m.name.as_ref()).collect();
    names.sort();
    assert_eq!(names, ["ada", "watcher"]);

    drop(sub);
    let left = wait_event(&mut events, "ada's leave", |e| name(e, false)).await;
    assert_eq!(left.name.as_ref(), "ada");

    // A topic without presence is refused.
    match watcher.presence("news.today").await {
        Err(Error::Server { code, .. }) => assert_eq!(code, ErrorCode::InvalidTopic),
        other => panic!("expected invalid_topic, got {other:?}"),
    }
    watcher.close().await.unwrap();
    ada.close().await.unwrap();
    stop(broker).await;
}
