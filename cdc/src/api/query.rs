//! Read-only queries over the lake's silver and gold tables, with the
//! limits every client request runs under: one SELECT, only `silver.*` and
//! `gold.*` tables, a row limit, a time limit, a memory limit, a bounded
//! number of queries at once.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use deltalake::datafusion::common::DataFusionError;
use deltalake::datafusion::dataframe::DataFrame;
use deltalake::datafusion::prelude::SessionContext;
use tokio::sync::Semaphore;

use crate::error::{Error, Refusal, Result};
use crate::lake::{self, Lake};

/// A query's result: the batches (at most `limit` rows) and whether more
/// rows were cut off.
pub(crate) struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub truncated: bool,
}

impl QueryResult {
    pub fn row_count(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// How a client wants the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Format {
    #[default]
    Json,
    Csv,
    Arrow,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Arrow => "application/vnd.apache.arrow.stream",
        }
    }
}

/// The limits and the lake every query runs against.
pub(crate) struct QueryRunner {
    lake: Lake,
    numeric_scale: i8,
    max_rows: usize,
    timeout: Duration,
    memory_bytes: usize,
    slots: Semaphore,
}

impl QueryRunner {
    pub fn new(cfg: &crate::Config, lake: Lake) -> QueryRunner {
        QueryRunner {
            lake,
            numeric_scale: cfg.numeric_scale,
            max_rows: cfg.api.max_rows,
            timeout: Duration::from_millis(cfg.api.query_timeout_ms),
            memory_bytes: cfg.api.query_memory_mb << 20,
            slots: Semaphore::new(cfg.api.concurrent_queries),
        }
    }

    pub fn max_rows(&self) -> usize {
        self.max_rows
    }

    /// The row limit for a request asking for `requested` rows.
    pub fn row_limit(&self, requested: Option<usize>) -> usize {
        requested.unwrap_or(self.max_rows).clamp(1, self.max_rows)
    }

    /// Run `sql` (one SELECT in PostgreSQL syntax) over the tables named in
    /// it, each of which `defined(layer, name)` must accept. At most `limit`
    /// rows.
    pub async fn sql(
        &self,
        sql: &str,
        defined: impl Fn(&str, &str) -> bool,
        limit: usize,
    ) -> Result<QueryResult> {
        self.bounded(async {
            let ctx = lake::session_within(Some(self.memory_bytes));
            lake::ensure_layer_schemas(&ctx)?;
            let parsed =
                crate::pg_sql::Parsed::new(&ctx, sql, self.numeric_scale).map_err(user_error)?;
            for (layer, name) in referenced_tables(&parsed)? {
                if !defined(&layer, &name) {
                    return Err(Error::refused(
                        Refusal::Invalid,
                        format!(
                            "relation {}: queries read only silver.<name> and gold.<name> tables that are defined",
                            if layer.is_empty() {
                                name.clone()
                            } else {
                                format!("{layer}.{name}")
                            }
                        ),
                    ));
                }
                self.register(&ctx, &layer, &name).await?;
            }
            let df = parsed.plan(&ctx).await.map_err(user_error)?;
            self.collect(df, limit, false).await
        })
        .await
    }

    /// Read gold model `name`: the chosen columns (all when `None`), in
    /// the order of `order_by` (the model's keys; all columns when none),
    /// `offset` rows skipped, at most `limit` rows.
    pub async fn table(
        &self,
        layer: &str,
        name: &str,
        columns: Option<&[String]>,
        order_by: Option<&[String]>,
        offset: usize,
        limit: usize,
    ) -> Result<QueryResult> {
        use deltalake::datafusion::prelude::col;
        self.bounded(async {
            let ctx = lake::session_within(Some(self.memory_bytes));
            lake::ensure_layer_schemas(&ctx)?;
            let qualified = self.register(&ctx, layer, name).await?;
            let mut df = ctx
                .table(qualified.as_str())
                .await
                .map_err(Error::datafusion(format!("read {qualified}")))?;
            let available: Vec<String> = df
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            let check = |c: &String| {
                if available.contains(c) {
                    Ok(())
                } else {
                    Err(Error::refused(
                        Refusal::Invalid,
                        format!(
                            "{qualified} has no column {c:?}; its columns: {}",
                            available.join(", ")
                        ),
                    ))
                }
            };
            let order: Vec<String> = match order_by {
                Some(keys) if !keys.is_empty() => keys.to_vec(),
                _ => available.clone(),
            };
            for c in &order {
                check(c)?;
            }
            // Sorted before the projection, so paging is stable whatever
            // columns are asked for.
            df = df
                .sort(
                    order
                        .iter()
                        .map(|c| col(lake::ident(c)).sort(true, true))
                        .collect(),
                )
                .map_err(user_error)?;
            if let Some(cols) = columns {
                for c in cols {
                    check(c)?;
                }
                df = df
                    .select(cols.iter().map(|c| col(lake::ident(c))).collect::<Vec<_>>())
                    .map_err(user_error)?;
            }
            if offset > 0 {
                df = df.limit(offset, None).map_err(user_error)?;
            }
            self.collect(df, limit, true).await
        })
        .await
    }

    /// The stored schema of `layer.name`, `None` before its first commit.
    pub async fn schema(&self, layer: &str, name: &str) -> Result<Option<SchemaRef>> {
        let Some(table) = self.lake.open(&self.lake.refined_url(layer, name)?).await? else {
            return Ok(None);
        };
        let snapshot = table.snapshot().map_err(Error::delta("snapshot"))?;
        Ok(Some(snapshot.snapshot().arrow_schema()))
    }

    /// Open `layer.name` from the lake and register it; its qualified name.
    async fn register(&self, ctx: &SessionContext, layer: &str, name: &str) -> Result<String> {
        let qualified = format!("{layer}.{name}");
        let table = self
            .lake
            .open(&self.lake.refined_url(layer, name)?)
            .await?
            .ok_or_else(|| {
                Error::refused(
                    Refusal::NotFound,
                    format!(
                        "{qualified} is defined but not in the lake yet: it has not been refreshed"
                    ),
                )
            })?;
        // Registered under a quoted two-part name so any defined name works.
        lake::register(
            ctx,
            &format!("{}.{}", lake::ident(layer), lake::ident(name)),
            &table,
        )
        .await?;
        Ok(qualified)
    }

    /// Run under the query slots and the time limit.
    async fn bounded<T>(&self, work: impl Future<Output = Result<T>>) -> Result<T> {
        let _slot = tokio::time::timeout(self.timeout, self.slots.acquire())
            .await
            .map_err(|_| {
                Error::refused(
                    Refusal::Busy,
                    "every query slot stayed busy for the whole query timeout; retry later",
                )
            })?
            .map_err(|_| Error::refused(Refusal::Unavailable, "the API is shutting down"))?;
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| {
                Error::refused(
                    Refusal::Timeout,
                    format!(
                        "the query ran longer than {} ms and was stopped (MEDALLION_API_QUERY_TIMEOUT_MS)",
                        self.timeout.as_millis()
                    ),
                )
            })?
    }

    /// At most `limit` rows of `df`, and whether more matched. With
    /// `in_plan`, the limit goes into the plan (a sort becomes a top-k: for
    /// paging through a gold model); otherwise the plan runs as written and
    /// reading stops after `limit + 1` rows (a client's query keeps the
    /// plan it would have in process, cancelled once enough rows came).
    async fn collect(&self, df: DataFrame, limit: usize, in_plan: bool) -> Result<QueryResult> {
        use futures::StreamExt;
        // One row more than asked tells whether the result was cut.
        let df = if in_plan {
            df.limit(0, Some(limit + 1)).map_err(user_error)?
        } else {
            df
        };
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let mut stream = df.execute_stream().await.map_err(|e| self.run_error(e))?;
        let mut kept = Vec::new();
        let mut rows = 0;
        let mut truncated = false;
        while let Some(b) = stream.next().await {
            let b = lake::without_views(&b.map_err(|e| self.run_error(e))?)?;
            if rows + b.num_rows() > limit {
                truncated = true;
                let take = limit - rows;
                if take > 0 {
                    kept.push(b.slice(0, take));
                }
                // Dropping the stream stops the query.
                break;
            }
            rows += b.num_rows();
            kept.push(b);
        }
        let schema = kept
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| plain_schema(&schema));
        Ok(QueryResult {
            schema,
            batches: kept,
            truncated,
        })
    }

    fn run_error(&self, e: DataFusionError) -> Error {
        let root = e.find_root();
        if matches!(root, DataFusionError::ResourcesExhausted(_)) {
            return Error::refused(
                Refusal::TooLarge,
                format!(
                    "the query needs more than {} MiB of memory (MEDALLION_API_QUERY_MEMORY_MB): \
                     filter or aggregate more, or ask for fewer rows",
                    self.memory_bytes >> 20
                ),
            );
        }
        user_error(e)
    }
}

/// The schema of a result with no batches, as batches would have it.
fn plain_schema(schema: &SchemaRef) -> SchemaRef {
    let empty = RecordBatch::new_empty(schema.clone());
    lake::without_views(&empty)
        .map(|b| b.schema())
        .unwrap_or_else(|_| schema.clone())
}

/// `(layer, name)` of every table the parsed query names; a name without
/// schema has an empty layer. A reference DataFusion cannot resolve is the
/// client's error.
fn referenced_tables(parsed: &crate::pg_sql::Parsed) -> Result<Vec<(String, String)>> {
    let refs = parsed.tables().map_err(user_error)?;
    let mut out = Vec::new();
    for r in refs {
        // Common table expressions are references too; DataFusion resolves
        // them itself when planning, so bare names are left to the planner.
        if let Some(schema) = r.schema() {
            if r.catalog().is_some_and(|c| c != "medallion") {
                return Err(Error::refused(
                    Refusal::Invalid,
                    format!("relation {r}: queries read only silver.<name> and gold.<name>"),
                ));
            }
            out.push((schema.to_string(), r.table().to_string()));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// A DataFusion error caused by the client's SQL or data is shown to the
/// client; one from storage stays in the log.
pub(crate) fn user_error(e: DataFusionError) -> Error {
    use arrow::error::ArrowError;
    let client = match e.find_root() {
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_)
        | DataFusionError::Execution(_)
        | DataFusionError::Configuration(_) => true,
        DataFusionError::ArrowError(a, _) => matches!(
            a.as_ref(),
            ArrowError::ComputeError(_)
                | ArrowError::DivideByZero
                | ArrowError::CastError(_)
                | ArrowError::InvalidArgumentError(_)
                | ArrowError::ArithmeticOverflow(_)
                | ArrowError::ParseError(_)
        ),
        _ => false,
    };
    if client {
        Error::refused(Refusal::Invalid, e.find_root().to_string())
    } else {
        Error::DataFusion {
            context: "run a query".into(),
            source: e,
        }
    }
}

/// Encode a result in `format`.
pub(crate) fn encode(result: &QueryResult, format: Format) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match format {
        Format::Json => {
            // The rows as Arrow's JSON writer writes them, placed into the
            // envelope as they are (no parse and re-serialization).
            let columns = serde_json::to_string(&columns(&result.schema))
                .map_err(|e| Error::Protocol(format!("encode JSON: {e}")))?;
            out.extend_from_slice(b"{\"columns\":");
            out.extend_from_slice(columns.as_bytes());
            out.extend_from_slice(b",\"rows\":");
            write_json_rows(result, &mut out)?;
            out.extend_from_slice(
                format!(
                    ",\"row_count\":{},\"truncated\":{}}}",
                    result.row_count(),
                    result.truncated
                )
                .as_bytes(),
            );
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            if result.batches.is_empty() {
                w.write(&RecordBatch::new_empty(result.schema.clone()))
                    .map_err(Error::arrow("encode CSV"))?;
            }
            for b in &result.batches {
                w.write(b).map_err(Error::arrow("encode CSV"))?;
            }
        }
        Format::Arrow => {
            let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &result.schema)
                .map_err(Error::arrow("encode Arrow IPC"))?;
            for b in &result.batches {
                w.write(b).map_err(Error::arrow("encode Arrow IPC"))?;
            }
            w.finish().map_err(Error::arrow("encode Arrow IPC"))?;
        }
    }
    Ok(out)
}

/// Name, type and nullability of each column.
pub(crate) fn columns(schema: &SchemaRef) -> Vec<super::operations::Column> {
    schema
        .fields()
        .iter()
        .map(|f| super::operations::Column {
            name: f.name().clone(),
            data_type: f.data_type().to_string(),
            nullable: f.is_nullable(),
        })
        .collect()
}

/// A batch with its decimal columns as text, exactly as Postgres prints
/// them (`7575.00`): a JSON number would reach most clients as a binary
/// float, and money must not.
fn decimals_as_text(batch: &RecordBatch) -> Result<RecordBatch> {
    use arrow::datatypes::{DataType, Field, Schema};
    let schema = batch.schema();
    if !schema.fields().iter().any(|f| {
        matches!(
            f.data_type(),
            DataType::Decimal128(..) | DataType::Decimal256(..)
        )
    }) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        if matches!(
            f.data_type(),
            DataType::Decimal128(..) | DataType::Decimal256(..)
        ) {
            columns.push(
                arrow::compute::cast(c, &DataType::Utf8)
                    .map_err(Error::arrow("decimal as text"))?,
            );
            fields.push(Field::new(f.name(), DataType::Utf8, f.is_nullable()));
        } else {
            columns.push(c.clone());
            fields.push(f.as_ref().clone());
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(Error::arrow("decimal as text"))
}

/// The rows as JSON objects: integers, floats and booleans as JSON values,
/// decimals as text exactly as Postgres prints them, dates and timestamps
/// as ISO 8601 text, NULL as null.
pub(crate) fn json_rows(result: &QueryResult) -> Result<Vec<serde_json::Value>> {
    let mut buf = Vec::new();
    write_json_rows(result, &mut buf)?;
    serde_json::from_slice(&buf).map_err(|e| Error::Protocol(format!("encode JSON: {e}")))
}

/// [`json_rows`] as a JSON array written to `out`.
fn write_json_rows(result: &QueryResult, out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    {
        let mut w = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::JsonArray>(&mut *out);
        for b in &result.batches {
            w.write(&decimals_as_text(b)?)
                .map_err(Error::arrow("encode JSON"))?;
        }
        w.finish().map_err(Error::arrow("encode JSON"))?;
    }
    // Arrow writes nothing when there are no rows.
    if out.len() == start {
        out.extend_from_slice(b"[]");
    }
    Ok(())
}
