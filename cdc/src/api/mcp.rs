//! The MCP server (official Rust SDK, `rmcp`): the same operations as the
//! HTTP API, as tools an AI agent calls, and one resource per gold model
//! holding its schema. Served over streamable HTTP at `/mcp` (behind the
//! API's bearer tokens) and over stdio by `medallion mcp`.

use std::sync::Arc;
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{
    Implementation, ListResourcesResult, PaginatedRequestParams, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::auth::{Scope, require};
use super::operations::{
    Lineage, ModelDetail, ModelSummary, Operations, RefreshOutcome, ResyncOutcome, Rows,
    StatusReport,
};
use crate::error::Error;

/// The MCP tools over [`Operations`].
#[derive(Clone)]
pub struct McpServer {
    ops: Arc<Operations>,
    tool_router: ToolRouter<Self>,
}

/// Gold models.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ModelList {
    pub models: Vec<ModelSummary>,
}

/// A model name.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ModelName {
    /// Gold model name, as `list_models` returns it (e.g. `profit_and_loss`).
    pub name: String,
}

/// A read-only query.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct GoldQuery {
    /// One SELECT in PostgreSQL syntax over `gold.<model>` (and
    /// `silver.<table>`) tables, e.g. `SELECT * FROM gold.profit_and_loss
    /// WHERE period >= '2026-01-01' ORDER BY period`.
    pub sql: String,
    /// At most this many rows (default: the server's maximum, 10,000 unless configured).
    pub limit: Option<u32>,
}

/// A refresh request.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RefreshRequest {
    /// Gold model name.
    pub name: String,
    /// Wait up to this many seconds (0–300) for the refresh to finish; 0 or
    /// absent returns at once.
    pub wait_seconds: Option<u32>,
}

/// A source table.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct TableName {
    /// Source table as `schema.table`, e.g. `public.res_partner`.
    pub table: String,
}

/// The scope of the request: what the HTTP layer's token granted; over
/// stdio (a local process started by its user with the sidecar's own
/// configuration) the operator's.
fn scope(ctx: &RequestContext<RoleServer>) -> Scope {
    match ctx.extensions.get::<axum::http::request::Parts>() {
        Some(parts) => parts
            .extensions
            .get::<Scope>()
            .copied()
            .unwrap_or(Scope::Read),
        None => Scope::Operate,
    }
}

fn tool_error(e: Error) -> String {
    match &e {
        Error::Request { message, .. } => message.clone(),
        other => {
            tracing::error!(error = %other, "MCP tool failed");
            "internal error; the sidecar log has the details".into()
        }
    }
}

fn rows(result: crate::Result<super::query::QueryResult>) -> Result<Json<Rows>, String> {
    let r = result.map_err(tool_error)?;
    Ok(Json(Rows {
        columns: super::query::columns(&r.schema),
        rows: super::query::json_rows(&r).map_err(tool_error)?,
        row_count: r.row_count(),
        truncated: r.truncated,
    }))
}

#[tool_router(router = tool_router)]
impl McpServer {
    pub fn new(ops: Arc<Operations>) -> McpServer {
        McpServer {
            ops,
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        name = "status",
        description = "Health of the lakehouse pipeline: whether it is healthy, a one-line summary, the \
                       replication slot (active, WAL status, bytes behind), failed objects, seconds since \
                       the last refinement, and the state of every bronze table, silver table and gold model. \
                       Use it first when asked whether data is fresh or something is broken."
    )]
    async fn status(&self) -> Result<Json<StatusReport>, String> {
        self.ops.status().await.map(Json).map_err(tool_error)
    }

    #[tool(
        name = "list_models",
        description = "Every gold model (the curated reporting tables) with its refresh policy, state, \
                       last refresh time, row count and where it is published. Use it to find which model \
                       answers a question before describe_model and query_gold."
    )]
    async fn list_models(&self) -> Result<Json<ModelList>, String> {
        self.ops
            .models()
            .await
            .map(|models| Json(ModelList { models }))
            .map_err(tool_error)
    }

    #[tool(
        name = "describe_model",
        description = "One gold model: its SQL, keys, input tables, expectations, columns with types, and \
                       freshness (state, last refresh, source LSN, last error). Use it to learn the columns \
                       before writing a query_gold query."
    )]
    async fn describe_model(
        &self,
        Parameters(p): Parameters<ModelName>,
    ) -> Result<Json<ModelDetail>, String> {
        self.ops.model(&p.name).await.map(Json).map_err(tool_error)
    }

    #[tool(
        name = "query_gold",
        description = "Run one read-only SELECT (PostgreSQL syntax) over gold.<model> and silver.<table> and \
                       return the rows as JSON objects with the column types. Only silver and gold tables \
                       can be read; writes are refused; rows and run time are limited (truncated = true \
                       when more rows matched). Aggregate in SQL rather than fetching many rows."
    )]
    async fn query_gold(&self, Parameters(q): Parameters<GoldQuery>) -> Result<Json<Rows>, String> {
        rows(self.ops.query(&q.sql, q.limit.map(|n| n as usize)).await)
    }

    #[tool(
        name = "refresh_model",
        description = "Recompute a gold model now instead of waiting for its schedule (needs the operator \
                       token). With wait_seconds, waits until the refresh finished and reports whether the \
                       model is fresh. Use it after data was imported and a report must include it."
    )]
    async fn refresh_model(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(p): Parameters<RefreshRequest>,
    ) -> Result<Json<RefreshOutcome>, String> {
        require(scope(&ctx), Scope::Operate).map_err(tool_error)?;
        let wait = p
            .wait_seconds
            .map(|w| Duration::from_secs(u64::from(w.min(300))));
        self.ops
            .refresh(&p.name, wait)
            .await
            .map(Json)
            .map_err(tool_error)
    }

    #[tool(
        name = "resync_table",
        description = "Copy one source table from Postgres into the lake again from a fresh snapshot (needs \
                       the operator token). Use it only when status shows the table failed, e.g. after an \
                       incompatible column type change; the table's silver and gold follow."
    )]
    async fn resync_table(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(p): Parameters<TableName>,
    ) -> Result<Json<ResyncOutcome>, String> {
        require(scope(&ctx), Scope::Operate).map_err(tool_error)?;
        self.ops
            .resync(&p.table)
            .await
            .map(Json)
            .map_err(tool_error)
    }

    #[tool(
        name = "lineage",
        description = "Which table feeds which: edges from bronze sources to silver tables to gold models, \
                       and the same graph as a mermaid flowchart. Use it to explain where a number comes \
                       from or what a failed table affects."
    )]
    async fn lineage(&self) -> Result<Json<Lineage>, String> {
        self.ops.lineage().await.map(Json).map_err(tool_error)
    }
}

const SCHEMA_URI: &str = "medallion://gold/";

#[tool_handler(router = self.tool_router)]
impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new("medallion", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "medallion is a lakehouse fed from an Odoo or Supabase Postgres database: bronze (raw \
             changes), silver (current tables) and gold (reporting models). Start with list_models, \
             read a model's columns with describe_model (or the resource medallion://gold/<name>/schema), \
             then answer with query_gold. status tells whether the data is fresh.",
        )
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let models = self
            .ops
            .models()
            .await
            .map_err(|e| ErrorData::internal_error(tool_error(e), None))?;
        Ok(ListResourcesResult::with_all_items(
            models
                .into_iter()
                .map(|m| {
                    Resource::new(
                        format!("{SCHEMA_URI}{}/schema", m.name),
                        format!("gold.{}", m.name),
                    )
                    .with_description(format!(
                        "Columns and types of gold model {} (refresh {})",
                        m.name, m.refresh
                    ))
                    .with_mime_type("application/json")
                })
                .collect(),
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let name = request
            .uri
            .strip_prefix(SCHEMA_URI)
            .and_then(|r| r.strip_suffix("/schema"))
            .filter(|n| super::operations::valid_name(n))
            .ok_or_else(|| {
                ErrorData::resource_not_found(format!("no resource {}", request.uri), None)
            })?;
        let model = self.ops.model(name).await.map_err(|e| match e {
            Error::Request {
                refusal: crate::Refusal::NotFound,
                message,
            } => ErrorData::resource_not_found(message, None),
            other => ErrorData::internal_error(tool_error(other), None),
        })?;
        let text = serde_json::json!({
            "model": model.name,
            "keys": model.keys,
            "columns": model.columns,
            "last_refreshed_at": model.last_refreshed_at,
        })
        .to_string();
        Ok(ReadResourceResult::new(vec![
            ResourceContents::text(text, request.uri.clone()).with_mime_type("application/json"),
        ])
        .into())
    }
}

/// Serve the MCP tools over stdin/stdout until the client closes them.
pub async fn serve_stdio(ops: Arc<Operations>) -> crate::Result<()> {
    use rmcp::ServiceExt;
    let running = McpServer::new(ops)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| Error::Protocol(format!("MCP over stdio: {e}")))?;
    running
        .waiting()
        .await
        .map_err(|e| Error::Protocol(format!("MCP over stdio: {e}")))?;
    Ok(())
}
