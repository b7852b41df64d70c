use crate::extract::{PlatformScope, Query, TenantScope};
use crate::problem::ApiError;
use crate::state::AppState;
use agentplane_core::page::PageRequest;
use agentplane_core::time::Timestamp;
use agentplane_core::usage::{UsageRecord, UsageSummary};
use agentplane_store::TimeRange;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct UsageParams {
    /// `YYYY-MM`; the current month when absent.
    #[param(pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])$")]
    pub period: Option<String>,
}

/// The tenant's usage in a period against its plan's quotas.
#[utoipa::path(get, path = "/v1/admin/tenants/{tenant_id}/usage", tag = "usage", security(("bearer" = [])),
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant"), UsageParams), responses((status = 200, body = UsageSummary), (status = 404)))]
pub async fn tenant_usage(
    State(state): State<AppState>,
    scope: TenantScope,
    Query(q): Query<UsageParams>,
) -> Result<Json<UsageSummary>, ApiError> {
    Ok(Json(
        state
            .control()
            .usage_summary(&scope.ctx, q.period.as_deref())
            .await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ExportParams {
    /// `json` (default) or `csv`.
    #[param(value_type = Option<ExportFormat>)]
    pub format: Option<String>,
    /// Start, inclusive: `YYYY-MM-DD` or RFC 3339.
    pub from: Option<String>,
    /// End, exclusive: `YYYY-MM-DD` or RFC 3339.
    pub to: Option<String>,
}

/// Export formats (documentation; the handler validates the raw value for a clear error).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "lowercase")]
pub enum ExportFormat {
    Json,
    Csv,
}

pub(crate) fn parse_time(
    field: &'static str,
    v: Option<&str>,
) -> Result<Option<Timestamp>, ApiError> {
    v.map(|s| {
        Timestamp::parse_date_or_rfc3339(s)
            .ok_or_else(|| ApiError::validation(field, "must be YYYY-MM-DD or RFC 3339"))
    })
    .transpose()
}

const EXPORT_PAGE: u32 = agentplane_core::page::MAX_LIMIT;

/// Every tenant's usage records in a date range, streamed as a JSON array or CSV.
#[utoipa::path(get, path = "/v1/admin/usage/export", tag = "usage", security(("bearer" = [])), params(ExportParams),
    responses((status = 200, description = "The usage records: a JSON array, or CSV with a header row",
        content((Vec<UsageRecord> = "application/json"), (String = "text/csv")))))]
pub async fn export(
    State(state): State<AppState>,
    scope: PlatformScope,
    Query(q): Query<ExportParams>,
) -> Result<Response, ApiError> {
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::validation("format", "must be json or csv")),
    };
    let range = TimeRange {
        from: parse_time("from", q.from.as_deref())?,
        to: parse_time("to", q.to.as_deref())?,
    };
    // Fetch the first page before answering, so a bad range is still a clean error.
    let first = state
        .control()
        .export_usage(&scope.ctx, range, &PageRequest::first(EXPORT_PAGE))
        .await?;
    let control = state.control().clone();
    let ctx = scope.ctx;
    let stream = futures::stream::unfold(Some((first, true)), move |st| {
        let control = control.clone();
        let ctx = ctx.clone();
        async move {
            let (page, first_chunk) = st?;
            let chunk = render(&page.items, csv, first_chunk, page.next_cursor.is_none());
            // A failure mid-stream aborts the transfer (the client sees a truncated body,
            // never a short export that looks complete).
            let next = match page.next_cursor {
                None => None,
                Some(c) => {
                    let fetched = match PageRequest::new(Some(&c), Some(EXPORT_PAGE)) {
                        Ok(req) => control
                            .export_usage(&ctx, range, &req)
                            .await
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    match fetched {
                        Ok(p) => Some((p, false)),
                        Err(e) => {
                            tracing::error!(error = %e, "usage export aborted mid-stream");
                            return Some((Err(std::io::Error::other("export aborted")), None));
                        }
                    }
                }
            };
            Some((Ok::<_, std::io::Error>(chunk), next))
        }
    });
    let content_type = if csv {
        "text/csv; charset=utf-8"
    } else {
        "application/json"
    };
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(stream),
    )
        .into_response())
}

fn render(items: &[UsageRecord], csv: bool, first: bool, last: bool) -> Vec<u8> {
    if csv {
        let mut w = csv::WriterBuilder::new()
            .has_headers(first)
            .from_writer(Vec::new());
        if first && items.is_empty() {
            let _ = w.write_record(CSV_HEADER);
        }
        for r in items {
            let _ = w.serialize(r);
        }
        return w.into_inner().unwrap_or_default();
    }
    let mut out = Vec::new();
    if first {
        out.push(b'[');
    }
    for (i, r) in items.iter().enumerate() {
        if !first || i > 0 {
            out.push(b',');
        }
        let _ = serde_json::to_writer(&mut out, r);
    }
    if last {
        out.push(b']');
    }
    out
}

const CSV_HEADER: [&str; 11] = [
    "id",
    "tenant_id",
    "ts",
    "agent_id",
    "model",
    "provider",
    "tokens_in",
    "tokens_out",
    "latency_ms",
    "status",
    "trace_id",
];
