//! A property-based run generated from the served OpenAPI document by
//! schemathesis (installed by `scripts/setup` as `st`), against the real
//! service and database, with a bounded number of cases and a fixed seed:
//!
//! - no answer is a 5xx, and every answer (status, content type, headers,
//!   body) is one the document describes — schemathesis' own checks;
//! - afterwards the audit invariant holds, judged from what was sent: every
//!   request that carried a valid token, reached an audited route and was
//!   answered with a success or an audited refusal left exactly one event
//!   with its request id in the outbox, and nothing else left any.
//!
//! Every exchange is read back from schemathesis' HAR report, so the
//! invariant is checked against the requests actually sent, including the
//! ones schemathesis makes up for its negative and coverage phases.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::helpers::spawn_app_with;

/// Cases per operation and phase; the whole run stays within a minute or
/// two on a small machine. (No `--max-time`: with one, schemathesis keeps
/// fuzzing until the time is spent.)
const MAX_EXAMPLES: &str = "100";
/// Fixed, so a failure found in CI is found again on a developer's machine
/// (set `FUZZ_SEED` to explore further).
const DEFAULT_SEED: &str = "20261203";
/// The refusals that leave a `rejected` event when the request reached an
/// audited route with a valid token (DESIGN.md §3): everything a client
/// asked for wrongly, but not a path that matched no route.
const AUDITED_REFUSALS: [u16; 6] = [400, 404, 409, 413, 415, 422];

/// `st`, from `.tools/bin` (what `just test` puts on the PATH) or the PATH.
fn schemathesis() -> PathBuf {
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin/st");
    if local.exists() {
        return local;
    }
    PathBuf::from("st")
}

/// The header `name` of a HAR request or response, if present.
fn har_header<'a>(message: &'a Value, name: &str) -> Option<&'a str> {
    message["headers"]
        .as_array()?
        .iter()
        .find(|h| {
            h["name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .and_then(|h| h["value"].as_str())
}

/// The path of a HAR request's URL, without query.
fn url_path(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = after_scheme.find('/').map_or("", |i| &after_scheme[i..]);
    path.split(['?', '#']).next().unwrap_or(path)
}

/// `/accounts/{id}/actions` (POST) or `/accounts/{id}` (GET, audited reads).
fn audited_route(method: &str, path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/accounts/") else {
        return false;
    };
    match method {
        "POST" => rest
            .strip_suffix("/actions")
            .is_some_and(|id| !id.is_empty() && !id.contains('/')),
        "GET" => !rest.is_empty() && !rest.contains('/'),
        _ => false,
    }
}

/// Whether this exchange must have left exactly one event.
fn must_be_audited(entry: &Value, token: &str) -> bool {
    let request = &entry["request"];
    let response = &entry["response"];
    let method = request["method"].as_str().unwrap_or_default();
    let path = url_path(request["url"].as_str().unwrap_or_default());
    if !audited_route(method, path) {
        return false;
    }
    if har_header(request, "authorization") != Some(&format!("Bearer {token}")) {
        return false;
    }
    if har_header(response, "idempotent-replayed") == Some("true") {
        return false;
    }
    let status = response["status"].as_u64().unwrap_or_default() as u16;
    if (200..300).contains(&status) {
        return true;
    }
    if !AUDITED_REFUSALS.contains(&status) {
        return false;
    }
    // A 404 may also mean that no route matched (an id that is empty or
    // holds a `/` after decoding): that never reached the audited route.
    let body: Value = response["content"]["text"]
        .as_str()
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or(Value::Null);
    body["code"] != "route_not_found"
}

#[tokio::test]
async fn a_property_based_run_from_the_openapi_document_finds_no_5xx_and_keeps_the_audit_invariant()
{
    // The rate limit would only turn cases into 429s.
    let app = spawn_app_with(|config| config.rate_limit = None).await;
    let token = app.token("fuzzer");
    // Accounts made before the run; schemathesis' own `open`s make more.
    for name in ["Acme", "Globex"] {
        app.open_account(name).await;
    }
    let opened = app.outbox_count().await;

    let report = tempfile::tempdir().unwrap();
    let har = report.path().join("run.har");
    let seed = std::env::var("FUZZ_SEED").unwrap_or_else(|_| DEFAULT_SEED.to_owned());
    let st = schemathesis();
    let output = tokio::task::spawn_blocking({
        let (address, har, token, seed, scratch) = (
            app.address.clone(),
            har.clone(),
            token.clone(),
            seed.clone(),
            report.path().to_owned(),
        );
        move || {
            Command::new(&st)
                // Its example database (.schemathesis/) goes to the
                // scratch folder, not into the source tree.
                .current_dir(&scratch)
                .arg("run")
                .arg(format!("{address}/openapi.json"))
                .args(["--url", &address])
                .args(["--header", &format!("Authorization: Bearer {token}")])
                .args([
                    "--checks",
                    "not_a_server_error,status_code_conformance,content_type_conformance,\
                     response_headers_conformance,response_schema_conformance",
                ])
                .args(["--phases", "examples,coverage,fuzzing"])
                .args(["--max-examples", MAX_EXAMPLES])
                .args(["--seed", &seed])
                .args(["--workers", "2"])
                .args(["--request-timeout", "30"])
                .args(["--report", "har"])
                .arg("--report-har-path")
                .arg(&har)
                .args(["--output-sanitize", "false"])
                .args(["--warnings", "off"])
                .arg("--no-color")
                .env("SCHEMATHESIS_HOOKS", "")
                .output()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run schemathesis ({}): {e}; `bash scripts/setup` installs it",
                        st.display()
                    )
                })
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems (seed {seed}):\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let har: Value = serde_json::from_slice(&std::fs::read(&har).unwrap()).unwrap();
    let entries = har["log"]["entries"].as_array().unwrap();
    eprintln!("schemathesis sent {} requests", entries.len());
    // Every case answered (a 5xx would have failed the run above).
    assert!(entries.len() > 100, "only {} requests sent", entries.len());

    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for entry in entries {
        let status = entry["response"]["status"].as_u64().unwrap_or_default();
        assert!(status < 500, "{status} for {}", entry["request"]);
        if must_be_audited(entry, &token) {
            let id = har_header(&entry["response"], "x-request-id")
                .expect("every answer carries X-Request-Id");
            *expected.entry(id.to_owned()).or_default() += 1;
        }
    }
    eprintln!(
        "{} of them must have left an event",
        expected.values().sum::<i64>()
    );
    assert!(
        expected.values().sum::<i64>() > 50,
        "too few audited requests to prove anything: {}",
        expected.len()
    );

    let events = app.outbox_events().await;
    let mut actual: BTreeMap<String, i64> = BTreeMap::new();
    for event in &events[usize::try_from(opened).unwrap()..] {
        assert_eq!(event.actor.id, "fuzzer");
        *actual.entry(event.request.id.clone()).or_default() += 1;
    }
    let missing: Vec<_> = expected
        .iter()
        .filter(|(id, n)| actual.get(*id) != Some(n))
        .collect();
    let unexpected: Vec<_> = actual
        .iter()
        .filter(|(id, _)| !expected.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "audit invariant broken: expected events for request ids {missing:?} \
         (actual {actual:?}); events nobody should have caused: {unexpected:?}"
    );
}

#[test]
fn audited_routes_are_recognised_from_the_request_line() {
    assert!(audited_route("POST", "/accounts/abc/actions"));
    assert!(audited_route("GET", "/accounts/abc"));
    assert!(!audited_route("POST", "/accounts//actions"));
    assert!(!audited_route("GET", "/accounts/abc/actions"));
    assert!(!audited_route("PUT", "/accounts/abc/actions"));
    assert!(!audited_route("GET", "/healthz"));
    assert_eq!(url_path("http://127.0.0.1:1/accounts/x?y=1"), "/accounts/x");
}
