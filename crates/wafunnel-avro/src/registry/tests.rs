use std::sync::atomic::AtomicBool;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::{event_v1, EVENT_V1_SCHEMA};

/// Fails its first fetch as unavailable, then serves v1 for every id.
#[derive(Debug, Default)]
struct FlakyRegistry {
    failed: AtomicBool,
    fetches: AtomicUsize,
}

impl SchemaRegistry for FlakyRegistry {
    async fn fetch(&self, _id: u32) -> Result<Schema, Error> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        if !self.failed.swap(true, Ordering::SeqCst) {
            return Err(Error::RegistryUnavailable("connection refused".into()));
        }
        Ok(event_v1().clone())
    }
}

/// Serves v1 for id 1 after a delay, so concurrent callers overlap.
#[derive(Debug, Default)]
struct SlowRegistry {
    fetches: AtomicUsize,
}

impl SchemaRegistry for SlowRegistry {
    async fn fetch(&self, id: u32) -> Result<Schema, Error> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        match id {
            1 => Ok(event_v1().clone()),
            _ => Err(Error::UnknownSchemaId(SchemaId::Registry(id))),
        }
    }
}

#[tokio::test]
async fn each_id_is_fetched_once() {
    let memory = MemoryRegistry::default();
    memory.insert(1, event_v1().clone());
    memory.insert(2, crate::event_v2().clone());
    let cache = CachingRegistry::new(memory);
    for _ in 0..10 {
        assert_eq!(*cache.get(1).await.unwrap(), *event_v1());
        assert_eq!(*cache.get(2).await.unwrap(), *crate::event_v2());
    }
    assert_eq!(cache.fetch(1).await.unwrap(), *event_v1());
    assert_eq!(cache.inner().fetches(), 2);
    assert_eq!(cache.cached(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_one_fetch() {
    let cache = Arc::new(CachingRegistry::new(SlowRegistry::default()));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move { cache.get(1).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(*task.await.unwrap().unwrap(), *event_v1());
    }
    assert_eq!(cache.inner().fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_failed_fetch_is_not_cached() {
    let cache = CachingRegistry::new(FlakyRegistry::default());
    let err = cache.get(5).await.unwrap_err();
    assert!(err.is_retryable());
    assert_eq!(err.code(), "schema_registry_unavailable");
    assert_eq!(cache.cached(), 0);
    assert_eq!(*cache.get(5).await.unwrap(), *event_v1());
    assert_eq!(*cache.get(5).await.unwrap(), *event_v1());
    assert_eq!(cache.inner().fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn unknown_ids_are_asked_again_and_leave_nothing_behind() {
    let cache = CachingRegistry::new(SlowRegistry::default());
    for _ in 0..3 {
        assert_eq!(
            cache.get(9).await.unwrap_err(),
            Error::UnknownSchemaId(SchemaId::Registry(9))
        );
    }
    assert_eq!(cache.inner().fetches.load(Ordering::SeqCst), 3);
    assert!(cache.cells().is_empty());
}

#[test]
fn fetch_answers_map_to_the_right_errors() {
    let ok = serde_json::json!({ "schema": EVENT_V1_SCHEMA }).to_string();
    assert_eq!(fetch_answer(1, StatusCode::OK, &ok).unwrap(), *event_v1());
    let avro = serde_json::json!({ "schema": "\"string\"", "schemaType": "AVRO" }).to_string();
    assert_eq!(
        fetch_answer(1, StatusCode::OK, &avro).unwrap(),
        Schema::String
    );

    let code = |status: u16, body: &str| {
        fetch_answer(3, StatusCode::from_u16(status).unwrap(), body)
            .unwrap_err()
            .code()
    };
    let not_found = r#"{"error_code":40403,"message":"Schema 3 not found"}"#;
    assert_eq!(code(404, not_found), "unknown_schema_id");
    assert_eq!(
        code(404, "<html>Not Found</html>"),
        "schema_registry_unavailable"
    );
    assert_eq!(
        code(404, r#"{"error_code":404,"message":"HTTP 404 Not Found"}"#),
        "schema_registry_unavailable"
    );
    assert_eq!(
        code(
            500,
            r#"{"error_code":50001,"message":"Error in the backend data store"}"#
        ),
        "schema_registry_unavailable"
    );
    assert_eq!(code(503, ""), "schema_registry_unavailable");
    assert_eq!(
        code(401, r#"{"error_code":401,"message":"Unauthorized"}"#),
        "schema_registry_unavailable"
    );
    assert_eq!(
        code(200, "<html>proxy</html>"),
        "schema_registry_unavailable"
    );
    assert_eq!(
        code(200, r#"{"schema":"{\"type\":\"nope\"}"}"#),
        "bad_schema"
    );
    assert_eq!(
        code(
            200,
            r#"{"schema":"syntax = \"proto3\";","schemaType":"PROTOBUF"}"#
        ),
        "bad_schema"
    );
}

#[test]
fn registry_urls_are_checked() {
    assert_eq!(HttpRegistry::new("not a url").unwrap_err().code(), "config");
    assert_eq!(
        HttpRegistry::new("mailto:x@y").unwrap_err().code(),
        "config"
    );
    let registry = HttpRegistry::new("http://127.0.0.1:8081/prefix/").unwrap();
    assert_eq!(
        registry.endpoint(&["schemas", "ids", "7"]).as_str(),
        "http://127.0.0.1:8081/prefix/schemas/ids/7"
    );
    let registry = HttpRegistry::new("http://127.0.0.1:8081").unwrap();
    assert_eq!(
        registry
            .endpoint(&["subjects", "wafunnel.events-value", "versions"])
            .as_str(),
        "http://127.0.0.1:8081/subjects/wafunnel.events-value/versions"
    );
    assert_eq!(
        registry.endpoint(&["subjects", "a/b c", "versions"]).path(),
        "/subjects/a%2Fb%20c/versions"
    );
}

/// One request the fake registry saw.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    head: String,
    body: String,
}

/// A minimal HTTP/1.1 server on 127.0.0.1 answering like a Confluent
/// registry holding v1 under id 1; it stops with the test's runtime.
async fn fake_registry() -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_owned())
                    })
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + length {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let mut words = head.split_whitespace();
                let method = words.next().unwrap_or_default().to_owned();
                let path = words.next().unwrap_or_default().to_owned();
                let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
                let (status, answer) = match (method.as_str(), path.as_str()) {
                    ("GET", "/schemas/ids/1") => (
                        200,
                        serde_json::json!({ "schema": EVENT_V1_SCHEMA }).to_string(),
                    ),
                    ("GET", "/schemas/ids/500") => {
                        (500, r#"{"error_code":50001,"message":"store"}"#.to_owned())
                    }
                    ("GET", _) => (
                        404,
                        r#"{"error_code":40403,"message":"Schema not found"}"#.to_owned(),
                    ),
                    ("POST", "/subjects/wafunnel.events-value/versions") => {
                        (200, r#"{"id":1}"#.to_owned())
                    }
                    ("POST", _) => (
                        409,
                        r#"{"error_code":409,"message":"incompatible"}"#.to_owned(),
                    ),
                    _ => (405, String::new()),
                };
                log.lock().unwrap().push(Seen {
                    method,
                    path,
                    head,
                    body,
                });
                let response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn http_registry_speaks_the_confluent_api() {
    let (url, seen) = fake_registry().await;
    let registry = HttpRegistry::new(&url)
        .unwrap()
        .with_basic_auth("user", Some("pw".into()));

    assert_eq!(
        registry
            .register("wafunnel.events-value", EVENT_V1_SCHEMA)
            .await
            .unwrap(),
        1
    );
    let post = seen.lock().unwrap()[0].clone();
    assert_eq!(
        (post.method.as_str(), post.path.as_str()),
        ("POST", "/subjects/wafunnel.events-value/versions")
    );
    assert!(post
        .head
        .to_ascii_lowercase()
        .contains("content-type: application/vnd.schemaregistry.v1+json"));
    assert!(post.head.contains("Basic dXNlcjpwdw=="), "{}", post.head);
    let sent: serde_json::Value = serde_json::from_str(&post.body).unwrap();
    assert_eq!(
        sent["schema"].as_str(),
        Some(EVENT_V1_SCHEMA),
        "the schema text goes as is, defaults and all"
    );

    let err = registry
        .register("other-value", EVENT_V1_SCHEMA)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::RegistryRejected {
            status: 409,
            error_code: Some(409),
            message: "incompatible".into()
        }
    );
    assert_eq!(
        registry
            .register("x", "{not avro")
            .await
            .unwrap_err()
            .code(),
        "bad_schema"
    );

    assert_eq!(registry.fetch(1).await.unwrap(), *event_v1());
    assert_eq!(
        registry.fetch(2).await.unwrap_err(),
        Error::UnknownSchemaId(SchemaId::Registry(2))
    );
    assert!(registry.fetch(500).await.unwrap_err().is_retryable());

    let cache = CachingRegistry::new(registry);
    for _ in 0..5 {
        cache.get(1).await.unwrap();
    }
    let gets = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.path == "/schemas/ids/1")
        .count();
    assert_eq!(gets, 2, "one direct fetch, one through the cache");
}

#[tokio::test]
async fn an_unreachable_registry_is_retryable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let registry = HttpRegistry::new(&url).unwrap();
    let err = registry.fetch(1).await.unwrap_err();
    assert_eq!(err.code(), "schema_registry_unavailable", "{err}");
    assert!(err.is_retryable());
    assert!(registry
        .register("s", EVENT_V1_SCHEMA)
        .await
        .unwrap_err()
        .is_retryable());
}
