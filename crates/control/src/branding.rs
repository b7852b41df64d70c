//! Tenant branding: product name, colours, custom domain (unique across tenants) and logo.
//! The logo's bytes go to the object store under the tenant's prefix, keyed by their hash, and
//! the branding row points at them, so a crash between the two leaves at worst an orphan
//! object, never a logo that is not the tenant's.

use crate::{ControlError, ControlPlane, Result};
use agentplane_core::audit::{Chain, NewAuditEvent};
use agentplane_core::authz::TenantCtx;
use agentplane_core::branding::{
    validate_color, validate_domain, validate_logo, validate_product_name, Branding, Logo,
};
use agentplane_core::time::Timestamp;
use agentplane_store::{Conflict, StoreError};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

/// A change of the branding's fields: absent fields stay as they are, `null` clears one.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BrandingPatch {
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>, max_length = 64)]
    pub product_name: Option<Option<String>>,
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>, pattern = "^#[0-9a-fA-F]{6}$")]
    pub primary_color: Option<Option<String>>,
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>, pattern = "^#[0-9a-fA-F]{6}$")]
    pub accent_color: Option<Option<String>>,
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>, format = Hostname)]
    pub custom_domain: Option<Option<String>>,
}

/// `Option<Option<T>>`: absent (None), `null` (Some(None)), or a value.
mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

fn apply<T>(
    field: Option<Option<String>>,
    current: &mut Option<String>,
    check: T,
) -> Result<(), agentplane_core::DomainError>
where
    T: Fn(&str) -> Result<String, agentplane_core::DomainError>,
{
    match field {
        None => Ok(()),
        Some(None) => {
            *current = None;
            Ok(())
        }
        Some(Some(v)) => {
            *current = Some(check(&v)?);
            Ok(())
        }
    }
}

const LOGO_PREFIX: &str = "branding/";

impl ControlPlane {
    pub async fn branding(&self, ctx: &TenantCtx) -> Result<Branding> {
        Ok(self.store.get_branding(ctx).await?)
    }

    pub async fn update_branding(&self, ctx: &TenantCtx, patch: BrandingPatch) -> Result<Branding> {
        self.change_branding(ctx, "branding.update", |b| {
            apply(
                patch.product_name.clone(),
                &mut b.product_name,
                validate_product_name,
            )?;
            apply(patch.primary_color.clone(), &mut b.primary_color, |v| {
                validate_color("primary_color", v)
            })?;
            apply(patch.accent_color.clone(), &mut b.accent_color, |v| {
                validate_color("accent_color", v)
            })?;
            apply(
                patch.custom_domain.clone(),
                &mut b.custom_domain,
                validate_domain,
            )?;
            Ok(json!({
                "product_name": b.product_name, "primary_color": b.primary_color,
                "accent_color": b.accent_color, "custom_domain": b.custom_domain,
            }))
        })
        .await
    }

    /// Stores a validated logo image (its type sniffed from its bytes) and points the branding
    /// at it; the previous logo's object is deleted afterwards.
    pub async fn put_logo(
        &self,
        ctx: &TenantCtx,
        declared_type: Option<&str>,
        bytes: bytes::Bytes,
    ) -> Result<Branding> {
        let content_type = validate_logo(declared_type, &bytes)?;
        let logo = Logo {
            content_type: content_type.to_owned(),
            sha256: hex::encode(Sha256::digest(&bytes)),
            size: bytes.len() as i64,
        };
        self.objects_of(ctx)
            .await?
            .put(ctx, &logo.object_key(), bytes)
            .await?;
        let mut old = None;
        let b = self
            .change_branding(ctx, "branding.logo_update", |b| {
                old = b.logo.replace(logo.clone());
                Ok(json!({"content_type": logo.content_type, "sha256": logo.sha256, "size": logo.size}))
            })
            .await?;
        if let Some(old) = old.filter(|o| o.sha256 != logo.sha256) {
            if let Err(e) = self
                .objects_of(ctx)
                .await?
                .delete(ctx, &old.object_key())
                .await
            {
                tracing::warn!(error = %e, "could not delete the replaced logo object");
            }
        }
        Ok(b)
    }

    pub async fn delete_logo(&self, ctx: &TenantCtx) -> Result<Branding> {
        let mut old = None;
        let b = self
            .change_branding(ctx, "branding.logo_delete", |b| {
                old = b.logo.take();
                Ok(json!({"sha256": old.as_ref().map(|l| l.sha256.clone())}))
            })
            .await?;
        if let Some(old) = old {
            self.objects_of(ctx)
                .await?
                .delete(ctx, &old.object_key())
                .await?;
        }
        Ok(b)
    }

    /// The logo's type, hash and bytes.
    pub async fn logo(&self, ctx: &TenantCtx) -> Result<(Logo, bytes::Bytes)> {
        let logo = self
            .store
            .get_branding(ctx)
            .await?
            .logo
            .ok_or(ControlError::NotFound("logo"))?;
        debug_assert!(logo.object_key().starts_with(LOGO_PREFIX));
        let bytes = self
            .objects_of(ctx)
            .await?
            .get(ctx, &logo.object_key())
            .await?
            .ok_or(ControlError::NotFound("logo"))?;
        Ok((logo, bytes))
    }

    async fn change_branding(
        &self,
        ctx: &TenantCtx,
        action: &str,
        mut change: impl FnMut(&mut Branding) -> Result<serde_json::Value, agentplane_core::DomainError>,
    ) -> Result<Branding> {
        for _ in 0..3 {
            let current = self.store.get_branding(ctx).await?;
            let mut next = current.clone();
            let data = change(&mut next)?;
            if next == current {
                return Ok(current);
            }
            let now = Timestamp::now();
            next.version = current.version + 1;
            next.updated_at = Some(now);
            let audit =
                NewAuditEvent::new(Chain::Tenant(ctx.tenant_id()), action, ctx.actor(), now)
                    .target("branding", ctx.tenant_id())
                    .data(data);
            match self
                .store
                .put_branding(ctx, &next, current.version, audit)
                .await
            {
                Ok(()) => return Ok(next),
                Err(StoreError::Conflict(Conflict::Version)) => continue,
                Err(StoreError::Conflict(Conflict::Domain)) => {
                    return Err(ControlError::Conflict(
                        crate::error::ConflictKind::DomainTaken,
                    ))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ControlError::Conflict(
            crate::error::ConflictKind::ConcurrentUpdate,
        ))
    }
}

impl ControlPlane {
    /// The console's tenant and branding before anyone signs in: the tenant whose custom
    /// domain or subdomain (`AGENTPLANE_BASE_DOMAIN`) the host is, or the one the path names.
    /// Host and path naming different tenants, an unknown tenant and one that is not active
    /// all read as not found: one tenant's branding is never shown for another.
    pub async fn console_branding(
        &self,
        host: Option<&str>,
        path: Option<&str>,
    ) -> Result<(agentplane_core::tenant::Tenant, Branding)> {
        let host = host
            .map(|h| h.split(':').next().unwrap_or_default().to_ascii_lowercase())
            .filter(|h| !h.is_empty());
        let mut by_host = None;
        if let Some(h) = &host {
            by_host = self.store.tenant_by_domain(h).await?;
            if by_host.is_none() {
                if let Some(base) = &self.identity.cfg.base_domain {
                    let label = h
                        .strip_suffix(base.as_str())
                        .and_then(|s| s.strip_suffix('.'))
                        .filter(|s| !s.is_empty() && !s.contains('.'));
                    if let Some(label) = label {
                        by_host = self.tenant_by_ref(label).await?.map(|t| t.id);
                    }
                }
            }
        }
        let by_path = match path {
            Some(p) => Some(
                self.tenant_by_ref(p)
                    .await?
                    .ok_or(ControlError::NotFound("tenant"))?
                    .id,
            ),
            None => None,
        };
        let id = match (by_host, by_path) {
            (Some(a), Some(b)) if a != b => return Err(ControlError::NotFound("tenant")),
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => return Err(ControlError::NotFound("tenant")),
        };
        let tenant = self
            .store
            .get_tenant(id)
            .await?
            .filter(|t| t.status == agentplane_core::tenant::TenantStatus::Active)
            .ok_or(ControlError::NotFound("tenant"))?;
        let ctx = TenantCtx::for_public_page(tenant.id, "console");
        let branding = self.store.get_branding(&ctx).await?;
        Ok((tenant, branding))
    }

    /// The logo the console shows (public, like the sign-in page it is on).
    pub async fn console_logo(&self, tenant: &str) -> Result<(Logo, bytes::Bytes)> {
        let (t, _) = self.console_branding(None, Some(tenant)).await?;
        self.logo(&TenantCtx::for_public_page(t.id, "console"))
            .await
    }
}
