//! Tenant settings: typed keys from the registry in `core`, every change a new version
//! (with who, when and the previous value), rollback to any version, and the feature set the
//! tenant's users see. Settings are read from the store on every use, so a change applies to
//! every user of the tenant at once.

use crate::{ControlError, ControlPlane, Result};
use agentplane_core::audit::{Chain, NewAuditEvent};
use agentplane_core::authz::TenantCtx;
use agentplane_core::page::{Page, PageRequest};
use agentplane_core::settings::{spec, SettingCategory, SettingSpec, SETTINGS};
use agentplane_core::time::Timestamp;
use agentplane_store::{Conflict, SettingChange, SettingVersion, StoreError};
use serde::Serialize;
use serde_json::{json, Value};

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct EffectiveSetting {
    pub key: &'static str,
    pub value: Value,
    /// 0 while the tenant uses the default.
    pub version: i64,
    pub is_default: bool,
    pub category: SettingCategory,
    pub description: &'static str,
    /// JSON schema of the value.
    #[schema(value_type = Object)]
    pub schema: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Timestamp>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Feature {
    pub name: String,
    pub enabled: bool,
    /// `plan` or `hidden_by_tenant`.
    pub source: &'static str,
}

fn effective(
    spec: &'static SettingSpec,
    stored: Option<agentplane_store::Setting>,
) -> EffectiveSetting {
    let (value, version, updated_at) = match stored {
        Some(s) => (s.value, s.version, Some(s.updated_at)),
        None => (spec.default_value(), 0, None),
    };
    EffectiveSetting {
        key: spec.key,
        is_default: version == 0,
        value,
        version,
        category: spec.category,
        description: spec.description,
        schema: spec.schema(),
        updated_at,
    }
}

fn setting_spec(key: &str) -> Result<&'static SettingSpec> {
    spec(key).ok_or(ControlError::NotFound("setting"))
}

impl ControlPlane {
    pub async fn list_settings(&self, ctx: &TenantCtx) -> Result<Vec<EffectiveSetting>> {
        let mut stored = self.store.list_settings(ctx).await?;
        Ok(SETTINGS
            .iter()
            .map(|spec| {
                let s = stored
                    .iter()
                    .position(|s| s.key == spec.key)
                    .map(|i| stored.swap_remove(i));
                effective(spec, s)
            })
            .collect())
    }

    /// An integer setting's effective value.
    pub(crate) async fn setting_i64(&self, ctx: &TenantCtx, key: &str) -> Result<i64> {
        self.setting(ctx, key)
            .await?
            .value
            .as_i64()
            .ok_or_else(|| ControlError::Internal(format!("setting {key} is not a number")))
    }

    pub async fn setting(&self, ctx: &TenantCtx, key: &str) -> Result<EffectiveSetting> {
        let spec = setting_spec(key)?;
        Ok(effective(spec, self.store.get_setting(ctx, key).await?))
    }

    /// Sets a value (idempotent: the same value again changes nothing). With
    /// `expected_version`, refuses if the setting changed since that version was read.
    pub async fn update_setting(
        &self,
        ctx: &TenantCtx,
        key: &str,
        value: &Value,
        expected_version: Option<i64>,
    ) -> Result<EffectiveSetting> {
        self.write_setting(
            ctx,
            key,
            value,
            expected_version,
            "settings.update",
            json!({}),
        )
        .await
    }

    /// Restores the value of an earlier version, as a new version.
    pub async fn rollback_setting(
        &self,
        ctx: &TenantCtx,
        key: &str,
        version: i64,
    ) -> Result<EffectiveSetting> {
        setting_spec(key)?;
        let old = self
            .store
            .setting_version(ctx, key, version)
            .await?
            .ok_or(ControlError::NotFound("setting version"))?;
        self.write_setting(
            ctx,
            key,
            &old.value,
            None,
            "settings.rollback",
            json!({"restored_version": version}),
        )
        .await
    }

    pub async fn setting_history(
        &self,
        ctx: &TenantCtx,
        key: &str,
        page: &PageRequest,
    ) -> Result<Page<SettingVersion>> {
        setting_spec(key)?;
        Ok(self.store.setting_history(ctx, key, page).await?)
    }

    async fn write_setting(
        &self,
        ctx: &TenantCtx,
        key: &str,
        value: &Value,
        expected_version: Option<i64>,
        action: &str,
        extra: Value,
    ) -> Result<EffectiveSetting> {
        let spec = setting_spec(key)?;
        let value = spec.validate(value)?;
        let ts = Timestamp::now();
        let mut data = json!({"key": key, "value": value});
        if let (Some(d), Value::Object(extra)) = (data.as_object_mut(), &extra) {
            d.extend(extra.clone());
        }
        let audit = NewAuditEvent::new(Chain::Tenant(ctx.tenant_id()), action, ctx.actor(), ts)
            .target("setting", key)
            .data(data);
        let change = SettingChange {
            key: key.to_owned(),
            value,
            expected_version,
            actor: ctx.actor().clone(),
            ts,
        };
        // Without an expected version, only two first writes of a key can collide (the store
        // locks existing rows): the loser simply writes on top.
        for _ in 0..3 {
            match self.store.put_setting(ctx, &change, audit.clone()).await {
                Ok(w) => return Ok(effective(spec, Some(w.setting))),
                Err(StoreError::Conflict(Conflict::Version)) if expected_version.is_none() => {
                    continue
                }
                Err(StoreError::Conflict(Conflict::Version)) => break,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ControlError::Conflict(
            crate::error::ConflictKind::ConcurrentUpdate,
        ))
    }

    /// The plan's features, less those the tenant admin hid (`features.disabled`).
    pub async fn features(&self, ctx: &TenantCtx) -> Result<Vec<Feature>> {
        let tenant = self.tenant(ctx).await?;
        let plan = self
            .store
            .get_plan(&tenant.plan_id)
            .await?
            .ok_or(ControlError::NotFound("plan"))?;
        let hidden = self.setting(ctx, "features.disabled").await?.value;
        let hidden: Vec<&str> = hidden
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        Ok(plan
            .features
            .iter()
            .map(|f| {
                let off = hidden.contains(&f.as_str()) || hidden.contains(&"*");
                Feature {
                    name: f.clone(),
                    enabled: !off,
                    source: if off { "hidden_by_tenant" } else { "plan" },
                }
            })
            .collect())
    }
}
