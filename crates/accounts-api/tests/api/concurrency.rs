//! Concurrent changes to one account are serialized: versions without gaps.

use std::collections::BTreeSet;

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::helpers::spawn_app;

#[tokio::test]
async fn concurrent_renames_of_one_account_give_consecutive_versions() {
    let app = spawn_app().await;
    let id = app.open_account("Start").await;
    const RENAMES: i64 = 30;

    let responses = join_all((0..RENAMES).map(|n| {
        let app = &app;
        async move {
            let response = app
                .act(
                    id,
                    json!({"action": "rename", "params": {"name": format!("Name {n}")}}),
                )
                .await;
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    }))
    .await;

    let versions: BTreeSet<i64> = responses
        .iter()
        .map(|r| r["account"]["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, (2..=RENAMES + 1).collect());

    let account = app.account(id).await.unwrap();
    assert_eq!(account.version, RENAMES + 1);
    let sequences: Vec<i64> = app
        .outbox_events()
        .await
        .iter()
        .map(|e| e.sequence.unwrap())
        .collect();
    let mut sorted = sequences.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=RENAMES + 1).collect::<Vec<_>>());
    // The last committed rename is the stored name.
    let last = responses
        .iter()
        .find(|r| r["account"]["version"] == RENAMES + 1)
        .unwrap();
    assert_eq!(last["account"]["name"], account.name);
}

#[tokio::test]
async fn concurrent_opens_of_one_id_create_it_once() {
    let app = spawn_app().await;
    let id = uuid::Uuid::new_v4();
    let statuses = join_all((0..10).map(|n| {
        let app = &app;
        async move {
            app.act(
                id,
                json!({"action": "open", "params": {"name": format!("N{n}")}}),
            )
            .await
            .status()
            .as_u16()
        }
    }))
    .await;
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1);
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 9);
    assert_eq!(app.outbox_count().await, 10);
    assert_eq!(app.account(id).await.unwrap().version, 1);
}
