//! The HTTP routes: each handler parses its request, calls
//! [`Operations`](super::operations::Operations) and renders the answer.
//! The OpenAPI document ([`ApiDoc`]) is generated from the same handlers
//! and kept in the repository as `docs/openapi.json`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use super::auth::{Scope, require};
use super::operations::{
    Lineage, ModelDetail, ModelSummary, Operations, RefreshOutcome, ResyncOutcome, Rows, Run,
    StatusReport,
};
use super::query::{Format, QueryResult, encode};
use crate::error::{Error, Refusal, Result};
use crate::metrics::Metrics;

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub ops: Arc<Operations>,
    pub metrics: Arc<Metrics>,
}

/// An error as clients see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// A stable code and a message safe to show.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// `invalid`, `unauthorized`, `forbidden`, `not_found`, `too_large`,
    /// `timeout`, `busy`, `unavailable` or `internal`.
    pub code: String,
    pub message: String,
}

fn refusal_status(r: Refusal) -> (StatusCode, &'static str) {
    match r {
        Refusal::Invalid => (StatusCode::BAD_REQUEST, "invalid"),
        Refusal::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
        Refusal::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
        Refusal::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        Refusal::TooLarge => (StatusCode::UNPROCESSABLE_ENTITY, "too_large"),
        Refusal::Timeout => (StatusCode::REQUEST_TIMEOUT, "timeout"),
        Refusal::Busy => (StatusCode::TOO_MANY_REQUESTS, "busy"),
        Refusal::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    }
}

/// The response for an error: a refusal with its own message; anything
/// else logged in full and answered with a fixed text (no database or
/// storage error text reaches the client).
pub(crate) fn error_response(e: &Error) -> Response {
    let (status, code, message) = match e {
        Error::Request { refusal, message } => {
            let (status, code) = refusal_status(*refusal);
            (status, code, message.clone())
        }
        other => {
            tracing::error!(error = %other, "API request failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; the sidecar log has the details".to_string(),
            )
        }
    };
    let mut response = (
        status,
        Json(ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message,
            },
        }),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

struct Reply<T>(Result<T>);

impl<T: Serialize> IntoResponse for Reply<T> {
    fn into_response(self) -> Response {
        match self.0 {
            Ok(v) => Json(v).into_response(),
            Err(e) => error_response(&e),
        }
    }
}

fn bad_query(e: QueryRejection) -> Error {
    Error::refused(Refusal::Invalid, format!("query string: {}", e.body_text()))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "The sidecar process is alive", body = Health)))]
pub(crate) async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Liveness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// Readiness answer: the reasons it is not ready, `[]` when ready.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    /// Stable words: `database_unreachable`, `slot_missing`, `slot_lost`,
    /// `slot_inactive`, `not_streaming`, `snapshotting`, `refiner_stopped`,
    /// `refiner_stalled`, `failed_objects`.
    pub reasons: Vec<String>,
}

/// Readiness: the slot streams, the refiner runs, nothing failed.
#[utoipa::path(get, path = "/ready", tag = "health",
    responses(
        (status = 200, description = "Streaming, refining, nothing failed", body = Readiness),
        (status = 503, description = "Degraded: the reasons name the states", body = Readiness)))]
pub(crate) async fn ready(State(s): State<AppState>) -> Response {
    let reasons = s.ops.readiness().await;
    let ready = reasons.is_empty();
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(Readiness {
            ready,
            reasons: reasons.into_iter().map(String::from).collect(),
        }),
    )
        .into_response()
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "OpenMetrics text format", body = String, content_type = "application/openmetrics-text")))]
pub(crate) async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// This document.
pub(crate) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

/// The OpenAPI document as pretty JSON (what `docs/openapi.json` holds).
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// The endpoint reference as a Markdown table (what docs/operate.md
/// holds between its `openapi` markers).
pub fn openapi_markdown() -> String {
    use utoipa::openapi::RefOr;
    let doc = ApiDoc::openapi();
    let mut out = String::from(
        "| endpoint | token | what it does | parameters | answers |\n|---|---|---|---|---|\n",
    );
    for (path, item) in &doc.paths.paths {
        for (method, op) in [("GET", &item.get), ("POST", &item.post)] {
            let Some(op) = op else { continue };
            let token = match op
                .tags
                .as_deref()
                .and_then(|t| t.first())
                .map(String::as_str)
            {
                Some("health") => "none",
                _ if method == "POST" && path != "/v1/query" => "operator",
                _ => "read",
            };
            let params: Vec<String> = op
                .parameters
                .iter()
                .flatten()
                .filter_map(|p| match p {
                    RefOr::T(p) => Some(format!("`{}`", p.name)),
                    RefOr::Ref(_) => None,
                })
                .chain(op.request_body.iter().map(|_| "JSON body".to_string()))
                .collect();
            let answers: Vec<String> = op
                .responses
                .responses
                .iter()
                .map(|(code, r)| match r {
                    RefOr::T(r) => format!("{code} {}", r.description),
                    RefOr::Ref(_) => code.clone(),
                })
                .collect();
            out.push_str(&format!(
                "| `{method} {path}` | {token} | {} | {} | {} |\n",
                op.summary.as_deref().unwrap_or("").replace('|', "\\|"),
                params.join(", "),
                answers.join("; ").replace('|', "\\|")
            ));
        }
    }
    out
}

/// Pipeline health and every object's state.
#[utoipa::path(get, path = "/v1/status", tag = "status",
    responses(
        (status = 200, description = "Health and objects of this sidecar's slot", body = StatusReport),
        (status = 401, description = "No or wrong token", body = ErrorBody),
        (status = 503, description = "Postgres cannot be reached", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn status(State(s): State<AppState>) -> impl IntoResponse {
    Reply(s.ops.status().await)
}

/// Filters of `GET /v1/runs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RunsParams {
    /// `silver` or `gold`.
    layer: Option<String>,
    /// A silver table or gold model.
    name: Option<String>,
    /// Newest first, at most this many (1–1000, default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// Silver and gold runs, newest first.
#[utoipa::path(get, path = "/v1/runs", tag = "status", params(RunsParams),
    responses(
        (status = 200, description = "Runs", body = Vec<Run>),
        (status = 400, description = "Bad filter", body = ErrorBody),
        (status = 401, description = "No or wrong token", body = ErrorBody),
        (status = 503, description = "Postgres cannot be reached", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn runs(
    State(s): State<AppState>,
    params: std::result::Result<Query<RunsParams>, QueryRejection>,
) -> impl IntoResponse {
    Reply(
        async {
            let Query(p) = params.map_err(bad_query)?;
            let limit = match p.limit {
                None => 50,
                Some(n @ 1..=1000) => n as usize,
                Some(n) => {
                    return Err(Error::refused(
                        Refusal::Invalid,
                        format!("limit {n}: between 1 and 1000"),
                    ));
                }
            };
            s.ops
                .runs(p.layer.as_deref(), p.name.as_deref(), limit)
                .await
        }
        .await,
    )
}

/// `format` of `GET /v1/lineage`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LineageParams {
    /// `json` (default) or `mermaid` (the flowchart as text/plain).
    format: Option<LineageFormat>,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LineageFormat {
    Json,
    Mermaid,
}

/// Which table feeds which.
#[utoipa::path(get, path = "/v1/lineage", tag = "status", params(LineageParams),
    responses(
        (status = 200, description = "Edges and a mermaid flowchart", content(
            (Lineage = "application/json"),
            (String = "text/plain"))),
        (status = 400, description = "Bad format", body = ErrorBody),
        (status = 401, description = "No or wrong token", body = ErrorBody),
        (status = 503, description = "Postgres cannot be reached", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn lineage(
    State(s): State<AppState>,
    params: std::result::Result<Query<LineageParams>, QueryRejection>,
) -> Response {
    let format = match params {
        Ok(Query(p)) => p.format.unwrap_or(LineageFormat::Json),
        Err(e) => return error_response(&bad_query(e)),
    };
    match (s.ops.lineage().await, format) {
        (Err(e), _) => error_response(&e),
        (Ok(l), LineageFormat::Json) => Json(l).into_response(),
        (Ok(l), LineageFormat::Mermaid) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            l.mermaid,
        )
            .into_response(),
    }
}

/// Every gold model with its freshness.
#[utoipa::path(get, path = "/v1/models", tag = "models",
    responses(
        (status = 200, description = "Gold models", body = Vec<ModelSummary>),
        (status = 401, description = "No or wrong token", body = ErrorBody),
        (status = 503, description = "Postgres cannot be reached", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn models(State(s): State<AppState>) -> impl IntoResponse {
    Reply(s.ops.models().await)
}

/// One gold model: definition, columns, freshness.
#[utoipa::path(get, path = "/v1/models/{name}", tag = "models",
    params(("name" = String, Path, description = "Gold model name")),
    responses(
        (status = 200, description = "The model", body = ModelDetail),
        (status = 400, description = "Bad name", body = ErrorBody),
        (status = 401, description = "No or wrong token", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
        (status = 503, description = "Postgres cannot be reached", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn model(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> impl IntoResponse {
    Reply(s.ops.model(&name).await)
}

/// `wait` of a refresh.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RefreshParams {
    /// Wait up to this many seconds (0–300) for the refiner to finish it.
    #[param(minimum = 0, maximum = 300)]
    wait: Option<u32>,
}

/// Recompute a gold model now (operator token).
#[utoipa::path(post, path = "/v1/models/{name}/refresh", tag = "models",
    params(("name" = String, Path, description = "Gold model name"), RefreshParams),
    responses(
        (status = 200, description = "Requested (and, with wait, the outcome)", body = RefreshOutcome),
        (status = 400, description = "Bad name or wait", body = ErrorBody),
        (status = 401, description = "No or wrong token", body = ErrorBody),
        (status = 403, description = "The read-only token may not refresh", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
        (status = 503, description = "Postgres cannot be reached", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn refresh(
    State(s): State<AppState>,
    Extension(scope): Extension<Scope>,
    Path(name): Path<String>,
    params: std::result::Result<Query<RefreshParams>, QueryRejection>,
) -> impl IntoResponse {
    Reply(
        async {
            require(scope, Scope::Operate)?;
            let Query(p) = params.map_err(bad_query)?;
            let wait = match p.wait {
                None => None,
                Some(w @ 0..=300) => Some(Duration::from_secs(w.into())),
                Some(w) => {
                    return Err(Error::refused(
                        Refusal::Invalid,
                        format!("wait {w}: between 0 and 300 seconds"),
                    ));
                }
            };
            s.ops.refresh(&name, wait).await
        }
        .await,
    )
}

/// Copy a source table again (operator token).
#[utoipa::path(post, path = "/v1/tables/{table}/resync", tag = "tables",
    params(("table" = String, Path, description = "Source table as schema.table, e.g. public.res_partner")),
    responses(
        (status = 200, description = "Resync requested", body = ResyncOutcome),
        (status = 400, description = "Bad name, or not a source", body = ErrorBody),
        (status = 401, description = "No or wrong token", body = ErrorBody),
        (status = 403, description = "The read-only token may not resync", body = ErrorBody),
        (status = 404, description = "No such table or source", body = ErrorBody),
        (status = 503, description = "Postgres cannot be reached", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn resync(
    State(s): State<AppState>,
    Extension(scope): Extension<Scope>,
    Path(table): Path<String>,
) -> impl IntoResponse {
    Reply(
        async {
            require(scope, Scope::Operate)?;
            s.ops.resync(&table).await
        }
        .await,
    )
}

/// An Arrow IPC stream (schema message, then record batches).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[expect(
    dead_code,
    reason = "only its schema is used: the body is written as bytes"
)]
pub struct ArrowStream(Vec<u8>);

/// Output formats of rows.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RowFormat {
    #[default]
    Json,
    Csv,
    Arrow,
}

impl From<RowFormat> for Format {
    fn from(f: RowFormat) -> Format {
        match f {
            RowFormat::Json => Format::Json,
            RowFormat::Csv => Format::Csv,
            RowFormat::Arrow => Format::Arrow,
        }
    }
}

fn rows_response(result: Result<QueryResult>, format: Format) -> Response {
    let body = result.and_then(|r| encode(&r, format).map(|b| (b, r.truncated, r.row_count())));
    match body {
        Ok((bytes, truncated, count)) => {
            let mut response =
                ([(header::CONTENT_TYPE, format.content_type())], bytes).into_response();
            let h = response.headers_mut();
            h.insert("x-medallion-row-count", HeaderValue::from(count));
            h.insert(
                "x-medallion-truncated",
                HeaderValue::from_static(if truncated { "true" } else { "false" }),
            );
            response
        }
        Err(e) => error_response(&e),
    }
}

/// Paging of `GET /v1/gold/{name}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct GoldParams {
    /// At most this many rows (default and maximum: MEDALLION_API_MAX_ROWS).
    #[param(minimum = 1)]
    limit: Option<u64>,
    /// Skip this many rows (rows are ordered by the model's keys, or by all columns).
    #[param(minimum = 0)]
    offset: Option<u64>,
    /// Comma-separated column names (default: all).
    columns: Option<String>,
    /// `json` (default), `csv` or `arrow` (Arrow IPC stream).
    format: Option<RowFormat>,
}

fn row_limit(s: &AppState, limit: Option<u64>) -> Result<Option<usize>> {
    let max = s.ops.runner().max_rows();
    match limit {
        None => Ok(None),
        Some(n) if n >= 1 && n <= max as u64 => Ok(Some(n as usize)),
        Some(n) => Err(Error::refused(
            Refusal::Invalid,
            format!("limit {n}: between 1 and {max} (MEDALLION_API_MAX_ROWS)"),
        )),
    }
}

/// Read a gold model's rows.
#[utoipa::path(get, path = "/v1/gold/{name}", tag = "data",
    params(("name" = String, Path, description = "Gold model name"), GoldParams),
    responses(
        (status = 200, description = "Rows; headers x-medallion-row-count and x-medallion-truncated", content(
            (Rows = "application/json"),
            (String = "text/csv"),
            (ArrowStream = "application/vnd.apache.arrow.stream"))),
        (status = 400, description = "Bad name, column or paging", body = ErrorBody),
        (status = 401, description = "No or wrong token", body = ErrorBody),
        (status = 404, description = "No such model, or not refreshed yet", body = ErrorBody),
        (status = 408, description = "Ran longer than the query timeout", body = ErrorBody),
        (status = 422, description = "Needs more memory than a query may hold", body = ErrorBody),
        (status = 429, description = "Every query slot is busy", body = ErrorBody),
        (status = 503, description = "Postgres or the lake cannot be reached", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn gold(
    State(s): State<AppState>,
    Path(name): Path<String>,
    params: std::result::Result<Query<GoldParams>, QueryRejection>,
) -> Response {
    let p = match params {
        Ok(Query(p)) => p,
        Err(e) => return error_response(&bad_query(e)),
    };
    let format: Format = p.format.unwrap_or_default().into();
    let result = async {
        let limit = row_limit(&s, p.limit)?;
        let columns: Option<Vec<String>> = p.columns.as_deref().map(|c| {
            c.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect()
        });
        if columns.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::refused(Refusal::Invalid, "columns is empty"));
        }
        let offset = usize::try_from(p.offset.unwrap_or(0))
            .map_err(|_| Error::refused(Refusal::Invalid, "offset is too large"))?;
        s.ops
            .gold_rows(&name, columns.as_deref(), offset, limit)
            .await
    }
    .await;
    rows_response(result, format)
}

/// A read-only query.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct QueryRequest {
    /// One SELECT in PostgreSQL syntax over `silver.<name>` and `gold.<name>`.
    #[schema(min_length = 1)]
    sql: String,
    /// At most this many rows (default and maximum: MEDALLION_API_MAX_ROWS).
    #[schema(minimum = 1)]
    limit: Option<u64>,
    #[serde(default)]
    format: Option<RowFormat>,
}

/// Run a read-only query over the lake's silver and gold tables.
#[utoipa::path(post, path = "/v1/query", tag = "data",
    request_body = QueryRequest,
    responses(
        (status = 200, description = "Rows; headers x-medallion-row-count and x-medallion-truncated", content(
            (Rows = "application/json"),
            (String = "text/csv"),
            (ArrowStream = "application/vnd.apache.arrow.stream"))),
        (status = 400, description = "Not one SELECT, a table other than silver.*/gold.*, or SQL that does not plan", body = ErrorBody),
        (status = 401, description = "No or wrong token", body = ErrorBody),
        (status = 404, description = "A model that is not refreshed yet", body = ErrorBody),
        (status = 408, description = "Ran longer than the query timeout", body = ErrorBody),
        (status = 422, description = "Needs more memory than a query may hold", body = ErrorBody),
        (status = 429, description = "Every query slot is busy", body = ErrorBody),
        (status = 503, description = "Postgres or the lake cannot be reached", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn query(
    State(s): State<AppState>,
    body: std::result::Result<Json<QueryRequest>, JsonRejection>,
) -> Response {
    let req = match body {
        Ok(Json(r)) => r,
        Err(e) => {
            return error_response(&Error::refused(
                Refusal::Invalid,
                format!("request body: {}", e.body_text()),
            ));
        }
    };
    let format: Format = req.format.unwrap_or_default().into();
    let result = async {
        let limit = row_limit(&s, req.limit)?;
        s.ops.query(&req.sql, limit).await
    }
    .await;
    rows_response(result, format)
}

/// Any other path.
pub(crate) async fn not_found() -> Response {
    error_response(&Error::refused(
        Refusal::NotFound,
        "no such route; GET /openapi.json lists them",
    ))
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "MEDALLION_API_TOKEN (operator) or MEDALLION_API_READ_TOKEN (read-only)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document of the HTTP API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "medallion sidecar API",
        description = "Operate the lakehouse: health, status, lineage, gold models, refresh, resync, read-only queries. \
                       The MCP server at /mcp offers the same as tools.",
        license(name = "Apache-2.0")
    ),
    paths(health, ready, metrics, status, runs, lineage, models, model, refresh, resync, gold, query),
    components(schemas(LineageFormat, RowFormat)),
    modifiers(&BearerAuth),
    tags(
        (name = "health", description = "Probes and metrics (no token)"),
        (name = "status", description = "Pipeline state (read token)"),
        (name = "models", description = "Gold models (read token; refresh needs the operator token)"),
        (name = "tables", description = "Source tables (operator token)"),
        (name = "data", description = "Rows from the lake (read token)")
    )
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    #[test]
    fn the_repository_holds_the_current_openapi_document() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
        let kept = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            kept.trim_end() == super::openapi_json().trim_end(),
            "docs/openapi.json is stale: run `cargo run -p medallion -- openapi > docs/openapi.json`"
        );
        let guide = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operate.md");
        let guide = std::fs::read_to_string(guide).unwrap_or_default();
        let section = guide
            .split("<!-- openapi:begin -->\n")
            .nth(1)
            .and_then(|rest| rest.split("<!-- openapi:end -->").next())
            .unwrap_or_default();
        assert!(
            section == super::openapi_markdown(),
            "docs/operate.md's endpoint table is stale: replace it with `cargo run -p medallion -- openapi --markdown`"
        );
    }
}
