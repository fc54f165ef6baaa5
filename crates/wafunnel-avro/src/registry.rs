//! Writer schemas by registry id: the [`SchemaRegistry`] trait, its
//! [`CachingRegistry`] wrapper, the Confluent REST client [`HttpRegistry`]
//! and the in-memory [`MemoryRegistry`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use apache_avro::Schema;
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use tokio::sync::OnceCell;

use crate::{Error, SchemaId};

/// The Confluent REST API's content type.
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
/// The Confluent REST API's `error_code` for "schema not found".
const SCHEMA_NOT_FOUND: i64 = 40403;

/// Where writer schemas are looked up by id.
///
/// `fetch` returns [`Error::UnknownSchemaId`] when the registry knows no
/// such id (fatal for the record), [`Error::RegistryUnavailable`] when it
/// could not be asked (retryable), [`Error::BadSchema`] when what it holds
/// under the id is not an Avro schema.
pub trait SchemaRegistry: Send + Sync {
    /// Fetches the schema registered under `id`.
    fn fetch(&self, id: u32) -> impl Future<Output = Result<Schema, Error>> + Send;
}

/// Caches a registry: each id is fetched once, however many records and
/// tasks ask for it at the same time. A failed fetch is not cached: the next
/// request for that id asks again.
#[derive(Debug)]
pub struct CachingRegistry<R> {
    inner: R,
    cells: Mutex<HashMap<u32, Arc<OnceCell<Arc<Schema>>>>>,
}

impl<R: SchemaRegistry> CachingRegistry<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        CachingRegistry {
            inner,
            cells: Mutex::new(HashMap::new()),
        }
    }

    /// The wrapped registry.
    pub fn inner(&self) -> &R {
        &self.inner
    }

    fn cells(&self) -> MutexGuard<'_, HashMap<u32, Arc<OnceCell<Arc<Schema>>>>> {
        // The map is never left half-updated, so a poisoned lock is usable.
        self.cells.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The schema under `id`, fetched on first use. Concurrent callers for
    /// the same id wait for one fetch.
    pub async fn get(&self, id: u32) -> Result<Arc<Schema>, Error> {
        let cell = Arc::clone(self.cells().entry(id).or_default());
        let result = cell
            .get_or_try_init(|| async { self.inner.fetch(id).await.map(Arc::new) })
            .await
            .cloned();
        if result.is_err() {
            // Forget the empty cell, so that ids that never resolve (garbage
            // records) do not accumulate.
            let mut cells = self.cells();
            if cells
                .get(&id)
                .is_some_and(|c| Arc::ptr_eq(c, &cell) && !c.initialized())
            {
                cells.remove(&id);
            }
        }
        result
    }

    /// How many schemas are cached.
    pub fn cached(&self) -> usize {
        self.cells().values().filter(|c| c.initialized()).count()
    }
}

impl<R: SchemaRegistry> SchemaRegistry for CachingRegistry<R> {
    async fn fetch(&self, id: u32) -> Result<Schema, Error> {
        self.get(id).await.map(|s| Schema::clone(&s))
    }
}

/// A registry held in memory: for tests, and for deployments that pin their
/// schemas in configuration. Counts its fetches.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    schemas: Mutex<HashMap<u32, Schema>>,
    fetches: AtomicUsize,
}

impl MemoryRegistry {
    /// Registers `schema` under `id`, replacing what was there.
    pub fn insert(&self, id: u32, schema: Schema) {
        self.schemas
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, schema);
    }

    /// How many times [`SchemaRegistry::fetch`] was called.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::Relaxed)
    }
}

impl SchemaRegistry for MemoryRegistry {
    async fn fetch(&self, id: u32) -> Result<Schema, Error> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let schemas = self.schemas.lock().unwrap_or_else(PoisonError::into_inner);
        schemas
            .get(&id)
            .cloned()
            .ok_or(Error::UnknownSchemaId(SchemaId::Registry(id)))
    }
}

/// A Confluent-compatible schema registry over its REST API (Confluent
/// Schema Registry, Karapace, Redpanda, Apicurio's `ccompat` API).
///
/// `fetch` is `GET {url}/schemas/ids/{id}`: 200 gives the schema, 404 with
/// `error_code` 40403 is [`Error::UnknownSchemaId`]; everything else
/// (connection errors, timeouts, 5xx, 401/403, a 404 without 40403, which is
/// more likely a wrong URL than a missing schema) is the retryable
/// [`Error::RegistryUnavailable`].
#[derive(Clone, Debug)]
pub struct HttpRegistry {
    client: reqwest::Client,
    base: Url,
    basic_auth: Option<(String, Option<String>)>,
}

#[derive(Deserialize)]
struct SchemaResponse {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
}

#[derive(Deserialize)]
struct IdResponse {
    id: u32,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error_code: Option<i64>,
    message: Option<String>,
}

impl HttpRegistry {
    /// A client for the registry at `url` (e.g. `http://127.0.0.1:8081`),
    /// with a 5 s connect and a 30 s request timeout.
    pub fn new(url: &str) -> Result<Self, Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        HttpRegistry::with_client(client, url)
    }

    /// A client for the registry at `url` using `client`.
    pub fn with_client(client: reqwest::Client, url: &str) -> Result<Self, Error> {
        let base = Url::parse(url)
            .map_err(|e| Error::Config(format!("schema registry URL `{url}`: {e}")))?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(Error::Config(format!(
                "schema registry URL `{url}` is not an http(s) URL"
            )));
        }
        Ok(HttpRegistry {
            client,
            base,
            basic_auth: None,
        })
    }

    /// Sends HTTP basic authentication with every request.
    pub fn with_basic_auth(mut self, user: impl Into<String>, password: Option<String>) -> Self {
        self.basic_auth = Some((user.into(), password));
        self
    }

    /// The registry's base URL.
    pub fn url(&self) -> &Url {
        &self.base
    }

    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        let request = self
            .client
            .request(method, url)
            .header(reqwest::header::ACCEPT, CONTENT_TYPE);
        match &self.basic_auth {
            Some((user, password)) => request.basic_auth(user, password.as_ref()),
            None => request,
        }
    }

    /// Registers `schema` (the Avro schema's JSON text, sent as is so that
    /// its defaults and docs reach the registry) under `subject` and returns
    /// its id; registering a schema the subject already has returns the
    /// existing id. A registry that refuses it (409 incompatible with the
    /// subject's compatibility rule, 422 invalid) gives
    /// [`Error::RegistryRejected`].
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, Error> {
        Schema::parse_str(schema).map_err(|e| Error::BadSchema {
            detail: e.to_string(),
        })?;
        let url = self.endpoint(&["subjects", subject, "versions"]);
        let body = serde_json::json!({ "schema": schema });
        let response = self
            .request(reqwest::Method::POST, url)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(body.to_string())
            .send()
            .await
            .map_err(unavailable)?;
        let status = response.status();
        let text = response.text().await.map_err(unavailable)?;
        if status.is_success() {
            return serde_json::from_str::<IdResponse>(&text)
                .map(|r| r.id)
                .map_err(|e| {
                    Error::RegistryUnavailable(format!(
                        "registration answer is not {{\"id\": n}}: {e}: {text:.200}"
                    ))
                });
        }
        if is_transient(status) {
            return Err(Error::RegistryUnavailable(format!(
                "HTTP {status}: {text:.200}"
            )));
        }
        let parsed = serde_json::from_str::<ErrorResponse>(&text).ok();
        Err(Error::RegistryRejected {
            status: status.as_u16(),
            error_code: parsed.as_ref().and_then(|p| p.error_code),
            message: parsed
                .and_then(|p| p.message)
                .unwrap_or_else(|| format!("{text:.200}")),
        })
    }
}

fn unavailable(e: reqwest::Error) -> Error {
    Error::RegistryUnavailable(e.to_string())
}

/// Statuses that say nothing about the request itself.
fn is_transient(status: StatusCode) -> bool {
    status.is_server_error()
        || matches!(
            status,
            StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
                | StatusCode::REQUEST_TIMEOUT
                | StatusCode::TOO_MANY_REQUESTS
        )
}

/// Turns a `GET /schemas/ids/{id}` answer into a schema or an error.
fn fetch_answer(id: u32, status: StatusCode, body: &str) -> Result<Schema, Error> {
    if status == StatusCode::OK {
        let answer: SchemaResponse = serde_json::from_str(body).map_err(|e| {
            Error::RegistryUnavailable(format!(
                "answer for id {id} is not {{\"schema\": ...}}: {e}: {body:.200}"
            ))
        })?;
        if let Some(kind) = answer.schema_type.as_deref().filter(|k| *k != "AVRO") {
            return Err(Error::BadSchema {
                detail: format!("id {id} is a {kind} schema, not Avro"),
            });
        }
        return Schema::parse_str(&answer.schema).map_err(|e| Error::BadSchema {
            detail: format!("id {id}: {e}"),
        });
    }
    let code = serde_json::from_str::<ErrorResponse>(body)
        .ok()
        .and_then(|e| e.error_code);
    if status == StatusCode::NOT_FOUND && code == Some(SCHEMA_NOT_FOUND) {
        return Err(Error::UnknownSchemaId(SchemaId::Registry(id)));
    }
    Err(Error::RegistryUnavailable(format!(
        "HTTP {status} for schema id {id}: {body:.200}"
    )))
}

impl SchemaRegistry for HttpRegistry {
    async fn fetch(&self, id: u32) -> Result<Schema, Error> {
        let url = self.endpoint(&["schemas", "ids", &id.to_string()]);
        let response = self
            .request(reqwest::Method::GET, url)
            .send()
            .await
            .map_err(unavailable)?;
        let status = response.status();
        let body = response.text().await.map_err(unavailable)?;
        fetch_answer(id, status, &body)
    }
}

#[cfg(test)]
mod tests;
