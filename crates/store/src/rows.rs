//! Row shapes shared by both backends, and their conversion to domain types.

use crate::error::corrupt;
use crate::{AuditPii, IdempotencyRecord, Member, Result, Setting};
use agentplane_core::audit::AuditEvent;
use agentplane_core::job::{Job, JobKind, JobStatus};
use agentplane_core::plan::{Plan, PlanLimits};
use agentplane_core::tenant::{Slug, Tenant, TenantStatus};
use agentplane_core::time::Timestamp;
use agentplane_core::usage::{UsageCounter, UsageRecord};
use agentplane_core::PlanId;

pub(crate) fn parse<T: std::str::FromStr>(s: &str, what: &str) -> Result<T> {
    s.parse().map_err(|_| corrupt(format!("{what}: {s:?}")))
}

pub(crate) fn json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| corrupt(format!("{what}: {e}")))
}

#[derive(sqlx::FromRow)]
pub(crate) struct PlanRow {
    id: String,
    name: String,
    monthly_messages: i64,
    monthly_tokens: i64,
    requests_per_minute: i64,
    max_concurrent_runs: i64,
    features: String,
    created_at: i64,
}

impl TryFrom<PlanRow> for Plan {
    type Error = crate::StoreError;
    fn try_from(r: PlanRow) -> Result<Self> {
        Ok(Plan {
            id: PlanId::parse(&r.id).map_err(corrupt)?,
            name: r.name,
            limits: PlanLimits {
                monthly_messages: r.monthly_messages,
                monthly_tokens: r.monthly_tokens,
                requests_per_minute: r.requests_per_minute,
                max_concurrent_runs: r.max_concurrent_runs,
            },
            features: json(&r.features, "plans.features")?,
            created_at: Timestamp::from_millis(r.created_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct TenantRow {
    tenant_id: String,
    slug: String,
    name: String,
    plan_id: String,
    status: String,
    region: String,
    created_at: i64,
    updated_at: i64,
    deleted_at: Option<i64>,
    version: i64,
}

impl TryFrom<TenantRow> for Tenant {
    type Error = crate::StoreError;
    fn try_from(r: TenantRow) -> Result<Self> {
        Ok(Tenant {
            id: parse(&r.tenant_id, "tenants.tenant_id")?,
            slug: Slug::parse(&r.slug).map_err(corrupt)?,
            name: r.name,
            plan_id: PlanId::parse(&r.plan_id).map_err(corrupt)?,
            status: TenantStatus::parse(&r.status).ok_or_else(|| corrupt("tenants.status"))?,
            region: r.region,
            created_at: Timestamp::from_millis(r.created_at),
            updated_at: Timestamp::from_millis(r.updated_at),
            deleted_at: r.deleted_at.map(Timestamp::from_millis),
            version: r.version,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct JobRow {
    tenant_id: String,
    id: String,
    kind: String,
    payload: String,
    status: String,
    attempts: i64,
    max_attempts: i64,
    run_at: i64,
    lease_token: Option<String>,
    lease_until: Option<i64>,
    last_error: Option<String>,
    created_at: i64,
    updated_at: i64,
    progress_pct: Option<i64>,
    progress_message: Option<String>,
    cancel_requested: i64,
}

impl TryFrom<JobRow> for Job {
    type Error = crate::StoreError;
    fn try_from(r: JobRow) -> Result<Self> {
        Ok(Job {
            id: parse(&r.id, "jobs.id")?,
            tenant_id: parse(&r.tenant_id, "jobs.tenant_id")?,
            kind: JobKind::parse(&r.kind).ok_or_else(|| corrupt("jobs.kind"))?,
            payload: json(&r.payload, "jobs.payload")?,
            status: JobStatus::parse(&r.status).ok_or_else(|| corrupt("jobs.status"))?,
            attempts: i32::try_from(r.attempts).map_err(corrupt)?,
            max_attempts: i32::try_from(r.max_attempts).map_err(corrupt)?,
            run_at: Timestamp::from_millis(r.run_at),
            lease_token: r.lease_token,
            lease_until: r.lease_until.map(Timestamp::from_millis),
            last_error: r.last_error,
            created_at: Timestamp::from_millis(r.created_at),
            updated_at: Timestamp::from_millis(r.updated_at),
            progress: r
                .progress_pct
                .map(|percent| agentplane_core::job::JobProgress {
                    percent,
                    message: r.progress_message.unwrap_or_default(),
                }),
            cancel_requested: r.cancel_requested != 0,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct MemberRow {
    tenant_id: String,
    user_id: String,
    email: String,
    name: Option<String>,
    roles: String,
    custom_roles: String,
    status: String,
    password_hash: Option<String>,
    external_id: Option<String>,
    created_at: i64,
    updated_at: i64,
    last_sign_in_at: Option<i64>,
}

impl TryFrom<MemberRow> for Member {
    type Error = crate::StoreError;
    fn try_from(r: MemberRow) -> Result<Self> {
        Ok(Member {
            tenant_id: parse(&r.tenant_id, "memberships.tenant_id")?,
            user_id: parse(&r.user_id, "memberships.user_id")?,
            email: r.email,
            name: r.name,
            roles: json(&r.roles, "memberships.roles")?,
            custom_roles: json(&r.custom_roles, "memberships.custom_roles")?,
            status: r.status,
            has_password: r.password_hash.is_some(),
            external_id: r.external_id,
            created_at: Timestamp::from_millis(r.created_at),
            updated_at: Timestamp::from_millis(r.updated_at),
            last_sign_in_at: r.last_sign_in_at.map(Timestamp::from_millis),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct SettingRow {
    key: String,
    value: String,
    version: i64,
    updated_at: i64,
}

impl TryFrom<SettingRow> for Setting {
    type Error = crate::StoreError;
    fn try_from(r: SettingRow) -> Result<Self> {
        Ok(Setting {
            value: json(&r.value, "tenant_settings.value")?,
            key: r.key,
            version: r.version,
            updated_at: Timestamp::from_millis(r.updated_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct SettingVersionRow {
    key: String,
    version: i64,
    value: String,
    previous: Option<String>,
    actor_kind: String,
    actor_id: String,
    ts: i64,
}

impl TryFrom<SettingVersionRow> for crate::SettingVersion {
    type Error = crate::StoreError;
    fn try_from(r: SettingVersionRow) -> Result<Self> {
        Ok(crate::SettingVersion {
            value: json(&r.value, "tenant_setting_history.value")?,
            previous: r
                .previous
                .as_deref()
                .map(|p| json(p, "tenant_setting_history.previous"))
                .transpose()?,
            key: r.key,
            version: r.version,
            actor_kind: r.actor_kind,
            actor_id: r.actor_id,
            ts: Timestamp::from_millis(r.ts),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct UsageCounterRow {
    tenant_id: String,
    period: String,
    messages_used: i64,
    tokens_used: i64,
    messages_reserved: i64,
    tokens_reserved: i64,
}

impl TryFrom<UsageCounterRow> for UsageCounter {
    type Error = crate::StoreError;
    fn try_from(r: UsageCounterRow) -> Result<Self> {
        Ok(UsageCounter {
            tenant_id: parse(&r.tenant_id, "usage_counters.tenant_id")?,
            period: r.period,
            messages_used: r.messages_used,
            tokens_used: r.tokens_used,
            messages_reserved: r.messages_reserved,
            tokens_reserved: r.tokens_reserved,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct UsageRecordRow {
    tenant_id: String,
    id: String,
    ts: i64,
    agent_id: Option<String>,
    model: String,
    provider: String,
    tokens_in: i64,
    tokens_out: i64,
    latency_ms: i64,
    status: String,
    trace_id: Option<String>,
}

impl TryFrom<UsageRecordRow> for UsageRecord {
    type Error = crate::StoreError;
    fn try_from(r: UsageRecordRow) -> Result<Self> {
        Ok(UsageRecord {
            id: parse(&r.id, "usage_records.id")?,
            tenant_id: parse(&r.tenant_id, "usage_records.tenant_id")?,
            ts: Timestamp::from_millis(r.ts),
            agent_id: r.agent_id,
            model: r.model,
            provider: r.provider,
            tokens_in: r.tokens_in,
            tokens_out: r.tokens_out,
            latency_ms: r.latency_ms,
            status: r.status,
            trace_id: r.trace_id,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AuditRow {
    tenant_id: String,
    seq: i64,
    id: String,
    ts: i64,
    action: String,
    actor_kind: String,
    actor_id: String,
    target_kind: Option<String>,
    target_id: Option<String>,
    outcome: String,
    data: String,
    pii_digest: Option<String>,
    trace_id: Option<String>,
    prev_hash: String,
    hash: String,
    pii_salt: Option<String>,
    pii: Option<String>,
}

impl AuditRow {
    pub(crate) fn into_parts(self) -> Result<(AuditEvent, Option<AuditPii>)> {
        let pii = match (self.pii_salt, self.pii) {
            (Some(salt), Some(value)) => Some(AuditPii {
                salt: hex::decode(&salt).map_err(corrupt)?,
                value: json(&value, "audit_pii.pii")?,
            }),
            _ => None,
        };
        let ev = AuditEvent {
            chain: self.tenant_id,
            seq: self.seq,
            id: parse(&self.id, "audit_events.id")?,
            ts: Timestamp::from_millis(self.ts),
            action: self.action,
            actor_kind: self.actor_kind,
            actor_id: self.actor_id,
            target_kind: self.target_kind,
            target_id: self.target_id,
            outcome: self.outcome,
            data: json(&self.data, "audit_events.data")?,
            pii_digest: self.pii_digest,
            trace_id: self.trace_id,
            prev_hash: self.prev_hash,
            hash: self.hash,
            pii: pii.as_ref().map(|p| p.value.clone()),
        };
        Ok((ev, pii))
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct IdempotencyRow {
    scope: String,
    key: String,
    request_hash: String,
    status: i64,
    response: String,
    created_at: i64,
}

impl TryFrom<IdempotencyRow> for IdempotencyRecord {
    type Error = crate::StoreError;
    fn try_from(r: IdempotencyRow) -> Result<Self> {
        Ok(IdempotencyRecord {
            scope: r.scope,
            key: r.key,
            request_hash: r.request_hash,
            status: u16::try_from(r.status).map_err(corrupt)?,
            response: r.response,
            created_at: Timestamp::from_millis(r.created_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct BrandingRow {
    product_name: Option<String>,
    primary_color: Option<String>,
    accent_color: Option<String>,
    custom_domain: Option<String>,
    logo_content_type: Option<String>,
    logo_sha256: Option<String>,
    logo_size: Option<i64>,
    version: i64,
    updated_at: i64,
}

impl From<BrandingRow> for agentplane_core::branding::Branding {
    fn from(r: BrandingRow) -> Self {
        let logo = match (r.logo_content_type, r.logo_sha256, r.logo_size) {
            (Some(content_type), Some(sha256), Some(size)) => {
                Some(agentplane_core::branding::Logo {
                    content_type,
                    sha256,
                    size,
                })
            }
            _ => None,
        };
        Self {
            product_name: r.product_name,
            primary_color: r.primary_color,
            accent_color: r.accent_color,
            custom_domain: r.custom_domain,
            logo,
            version: r.version,
            updated_at: Some(Timestamp::from_millis(r.updated_at)),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct TenantKeyRow {
    pub(crate) tenant_id: String,
    version: i64,
    kms: String,
    kek_version: i64,
    wrapped: String,
    state: String,
    created_at: i64,
}

impl TenantKeyRow {
    pub(crate) fn into_key(self) -> Result<(agentplane_core::TenantId, crate::TenantKey)> {
        let tenant = parse(&self.tenant_id, "tenant_keys.tenant_id")?;
        Ok((
            tenant,
            crate::TenantKey {
                version: self.version,
                kms: self.kms,
                kek_version: self.kek_version,
                wrapped: self.wrapped,
                state: self.state,
                created_at: Timestamp::from_millis(self.created_at),
            },
        ))
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ProviderRow {
    tenant_id: String,
    id: String,
    name: String,
    kind: String,
    base_url: String,
    api_version: Option<String>,
    models: String,
    auth: String,
    secret: Vec<u8>,
    key_version: i64,
    fingerprint: String,
    created_at: i64,
    updated_at: i64,
    version: i64,
    shared_id: Option<String>,
}

impl TryFrom<ProviderRow> for crate::ProviderRecord {
    type Error = crate::StoreError;
    fn try_from(r: ProviderRow) -> Result<Self> {
        use agentplane_core::provider::{Provider, ProviderKind};
        Ok(crate::ProviderRecord {
            provider: Provider {
                id: parse(&r.id, "provider_credentials.id")?,
                tenant_id: parse(&r.tenant_id, "provider_credentials.tenant_id")?,
                name: r.name,
                kind: ProviderKind::parse(&r.kind)
                    .ok_or_else(|| corrupt("provider_credentials.kind"))?,
                base_url: r.base_url,
                auth: json(&r.auth, "provider_credentials.auth")?,
                api_version: r.api_version,
                models: json(&r.models, "provider_credentials.models")?,
                fingerprint: r.fingerprint,
                key_version: r.key_version,
                created_at: Timestamp::from_millis(r.created_at),
                updated_at: Timestamp::from_millis(r.updated_at),
                version: r.version,
                shared_id: r.shared_id,
            },
            sealed_secret: r.secret,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct SharedProviderRow {
    id: String,
    name: String,
    kind: String,
    base_url: String,
    auth: String,
    api_version: Option<String>,
    models: String,
    plans: String,
    wrapped_key: String,
    secret: Vec<u8>,
    fingerprint: String,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<SharedProviderRow> for crate::SharedProviderRecord {
    type Error = crate::StoreError;
    fn try_from(r: SharedProviderRow) -> Result<Self> {
        use agentplane_core::provider::{ProviderKind, SharedProvider};
        Ok(crate::SharedProviderRecord {
            provider: SharedProvider {
                id: r.id,
                name: r.name,
                kind: ProviderKind::parse(&r.kind)
                    .ok_or_else(|| corrupt("shared_providers.kind"))?,
                base_url: r.base_url,
                auth: json(&r.auth, "shared_providers.auth")?,
                api_version: r.api_version,
                models: json(&r.models, "shared_providers.models")?,
                plans: json(&r.plans, "shared_providers.plans")?,
                fingerprint: r.fingerprint,
                created_at: Timestamp::from_millis(r.created_at),
                updated_at: Timestamp::from_millis(r.updated_at),
            },
            wrapped_key: r.wrapped_key,
            sealed_secret: r.secret,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AgentRow {
    tenant_id: String,
    id: String,
    name: String,
    provider_id: String,
    model: String,
    system_prompt: String,
    params: String,
    version: i64,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<AgentRow> for agentplane_core::agent::Agent {
    type Error = crate::StoreError;
    fn try_from(r: AgentRow) -> Result<Self> {
        Ok(agentplane_core::agent::Agent {
            id: parse(&r.id, "agents.id")?,
            tenant_id: parse(&r.tenant_id, "agents.tenant_id")?,
            name: r.name,
            provider_id: parse(&r.provider_id, "agents.provider_id")?,
            model: r.model,
            system_prompt: r.system_prompt,
            params: json(&r.params, "agents.params")?,
            version: r.version,
            created_at: Timestamp::from_millis(r.created_at),
            updated_at: Timestamp::from_millis(r.updated_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AgentVersionRow {
    version: i64,
    snapshot: String,
    actor_kind: String,
    actor_id: String,
    ts: i64,
}

impl TryFrom<AgentVersionRow> for crate::AgentVersion {
    type Error = crate::StoreError;
    fn try_from(r: AgentVersionRow) -> Result<Self> {
        Ok(crate::AgentVersion {
            version: r.version,
            agent: json(&r.snapshot, "agent_versions.snapshot")?,
            actor_kind: r.actor_kind,
            actor_id: r.actor_id,
            ts: Timestamp::from_millis(r.ts),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ApiKeyRow {
    tenant_id: String,
    id: String,
    public_id: String,
    name: String,
    secret_hash: String,
    scopes: String,
    created_by: String,
    created_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    last_used_at: Option<i64>,
}

/// An API key joined with its tenant's status and plan.
#[derive(sqlx::FromRow)]
pub(crate) struct ApiKeyTenantRow {
    #[sqlx(flatten)]
    pub(crate) key: ApiKeyRow,
    pub(crate) tenant_status: String,
    pub(crate) tenant_plan: String,
    pub(crate) tenant_region: String,
}

impl ApiKeyRow {
    pub(crate) fn into_key(self) -> Result<(agentplane_core::api_key::ApiKey, String)> {
        let key = agentplane_core::api_key::ApiKey {
            id: parse(&self.id, "api_keys.id")?,
            tenant_id: parse(&self.tenant_id, "api_keys.tenant_id")?,
            name: self.name,
            prefix: format!("{}{}", agentplane_core::api_key::PREFIX, self.public_id),
            scopes: json(&self.scopes, "api_keys.scopes")?,
            created_by: self.created_by,
            created_at: Timestamp::from_millis(self.created_at),
            expires_at: self.expires_at.map(Timestamp::from_millis),
            revoked_at: self.revoked_at.map(Timestamp::from_millis),
            last_used_at: self.last_used_at.map(Timestamp::from_millis),
        };
        Ok((key, self.secret_hash))
    }
}
