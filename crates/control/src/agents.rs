//! Agents: CRUD with a version per change (the whole definition as it was), audited. An agent
//! names a provider of its own tenant; the store's foreign key makes any other impossible.

use crate::{ControlError, ControlPlane, Result};
use agentplane_core::agent::{
    validate_agent_name, validate_model, validate_system_prompt, Agent, AgentParams,
};
use agentplane_core::audit::{Chain, NewAuditEvent};
use agentplane_core::authz::TenantCtx;
use agentplane_core::page::{Page, PageRequest};
use agentplane_core::time::Timestamp;
use agentplane_core::{AgentId, DomainError, ProviderId};
use agentplane_store::{AgentVersion, Conflict, StoreError};
use serde::Deserialize;
use serde_json::json;

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgent {
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub name: String,
    /// A provider credential of the same tenant.
    pub provider_id: ProviderId,
    pub model: String,
    #[serde(default)]
    #[schema(max_length = 100000)]
    pub system_prompt: String,
    #[serde(default)]
    pub params: AgentParams,
}

#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAgent {
    pub name: Option<String>,
    pub provider_id: Option<ProviderId>,
    pub model: Option<String>,
    pub system_prompt: Option<String>,
    pub params: Option<AgentParams>,
    /// Refuse (409) if the agent changed since this version.
    pub expected_version: Option<i64>,
}

fn parse_id(id: &str) -> Result<AgentId> {
    id.parse().map_err(|_| ControlError::NotFound("agent"))
}

fn store_err(e: StoreError) -> ControlError {
    match e {
        StoreError::Conflict(Conflict::Name) => {
            ControlError::Conflict(crate::error::ConflictKind::NameTaken)
        }
        StoreError::Conflict(Conflict::Reference) => ControlError::Invalid(DomainError::invalid(
            "provider_id",
            "is not a provider of this tenant",
        )),
        StoreError::Conflict(Conflict::Version) => {
            ControlError::Conflict(crate::error::ConflictKind::ConcurrentUpdate)
        }
        e => e.into(),
    }
}

impl ControlPlane {
    pub async fn create_agent(&self, ctx: &TenantCtx, req: CreateAgent) -> Result<Agent> {
        req.params.validate()?;
        let now = Timestamp::now();
        let agent = Agent {
            id: AgentId::new(),
            tenant_id: ctx.tenant_id(),
            name: validate_agent_name(&req.name)?,
            provider_id: req.provider_id,
            model: validate_model(&req.model)?,
            system_prompt: validate_system_prompt(&req.system_prompt)?,
            params: req.params,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        let audit = NewAuditEvent::new(Chain::Tenant(ctx.tenant_id()), "agent.create", ctx.actor(), now)
            .target("agent", agent.id)
            .data(json!({"name": agent.name, "provider_id": agent.provider_id, "model": agent.model, "version": 1}));
        self.store
            .insert_agent(ctx, &agent, audit)
            .await
            .map_err(store_err)?;
        Ok(agent)
    }

    pub async fn agent(&self, ctx: &TenantCtx, id: &str) -> Result<Agent> {
        self.store
            .get_agent(ctx, parse_id(id)?)
            .await?
            .ok_or(ControlError::NotFound("agent"))
    }

    /// The agent a gateway call names: by id, or by name (what OpenAI clients send as `model`).
    pub async fn agent_by_ref(&self, ctx: &TenantCtx, name_or_id: &str) -> Result<Agent> {
        let found = match name_or_id.parse::<agentplane_core::AgentId>() {
            Ok(id) => self.store.get_agent(ctx, id).await?,
            Err(_) => self.store.get_agent_by_name(ctx, name_or_id).await?,
        };
        found.ok_or(ControlError::NotFound("agent"))
    }

    pub async fn list_agents(&self, ctx: &TenantCtx, page: &PageRequest) -> Result<Page<Agent>> {
        Ok(self.store.list_agents(ctx, page).await?)
    }

    pub async fn update_agent(&self, ctx: &TenantCtx, id: &str, req: UpdateAgent) -> Result<Agent> {
        let current = self.agent(ctx, id).await?;
        if req.expected_version.is_some_and(|v| v != current.version) {
            return Err(ControlError::Conflict(
                crate::error::ConflictKind::ConcurrentUpdate,
            ));
        }
        let mut next = current.clone();
        if let Some(n) = &req.name {
            next.name = validate_agent_name(n)?;
        }
        if let Some(p) = req.provider_id {
            next.provider_id = p;
        }
        if let Some(m) = &req.model {
            next.model = validate_model(m)?;
        }
        if let Some(s) = &req.system_prompt {
            next.system_prompt = validate_system_prompt(s)?;
        }
        if let Some(p) = req.params {
            p.validate()?;
            next.params = p;
        }
        if next == current {
            return Ok(current);
        }
        next.version = current.version + 1;
        next.updated_at = Timestamp::now();
        let audit = NewAuditEvent::new(Chain::Tenant(ctx.tenant_id()), "agent.update", ctx.actor(), next.updated_at)
            .target("agent", next.id)
            .data(json!({"version": next.version, "provider_id": next.provider_id, "model": next.model, "name": next.name}));
        self.store
            .update_agent(ctx, &next, current.version, audit)
            .await
            .map_err(store_err)?;
        Ok(next)
    }

    pub async fn delete_agent(&self, ctx: &TenantCtx, id: &str) -> Result<()> {
        let id = parse_id(id)?;
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "agent.delete",
            ctx.actor(),
            Timestamp::now(),
        )
        .target("agent", id);
        if self.store.delete_agent(ctx, id, audit).await? {
            Ok(())
        } else {
            Err(ControlError::NotFound("agent"))
        }
    }

    pub async fn agent_versions(
        &self,
        ctx: &TenantCtx,
        id: &str,
        page: &PageRequest,
    ) -> Result<Page<AgentVersion>> {
        let agent = self.agent(ctx, id).await?;
        Ok(self.store.agent_versions(ctx, agent.id, page).await?)
    }
}
