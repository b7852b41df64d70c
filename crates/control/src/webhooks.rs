//! The tenant's webhook for usage notifications: a URL and a signing secret (generated, shown
//! once, sealed with the tenant's data key), and the worker's delivery of `usage.notify` jobs,
//! signed as the Standard Webhooks specification describes.

use crate::provisioning::JobError;
use crate::{ControlError, ControlPlane, Result};
use agentplane_core::audit::{Chain, NewAuditEvent};
use agentplane_core::authz::TenantCtx;
use agentplane_core::job::Job;
use agentplane_core::provider::fingerprint;
use agentplane_core::time::Timestamp;
use agentplane_core::webhook::{UsageNotice, Webhook};
use agentplane_store::StoreError;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;

/// The associated-data kind of a sealed webhook secret.
const SECRET_KIND: &str = "webhook_secret";
const SECRET_PREFIX: &str = "whsec_";

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutWebhook {
    /// Where usage notifications are POSTed (http or https; public addresses only, unless the
    /// deployment allows private ones).
    #[schema(max_length = 2048)]
    pub url: String,
}

/// A webhook just set: `secret` (`whsec_` + base64) is shown this once; every PUT makes a new one.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedWebhook {
    pub webhook: Webhook,
    pub secret: String,
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(), // HMAC takes keys of any length
    };
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

impl ControlPlane {
    pub async fn webhook(&self, ctx: &TenantCtx) -> Result<Webhook> {
        self.store
            .get_webhook(ctx)
            .await?
            .map(|(w, _)| w)
            .ok_or(ControlError::NotFound("webhook"))
    }

    /// Sets the webhook's URL with a fresh signing secret.
    pub async fn put_webhook(&self, ctx: &TenantCtx, req: PutWebhook) -> Result<CreatedWebhook> {
        if req.url.len() > 2048 {
            return Err(
                agentplane_core::DomainError::invalid("url", "at most 2048 characters").into(),
            );
        }
        let url = self.check_outbound_url("url", &req.url).await?;
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        let secret = format!(
            "{SECRET_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        );
        let tenant = ctx.tenant_id().to_string();
        let (sealed, key_version) = self.seal_secret(ctx, SECRET_KIND, &tenant, &key).await?;
        let now = Timestamp::now();
        let created_at = self
            .store
            .get_webhook(ctx)
            .await?
            .map_or(now, |(w, _)| w.created_at);
        let webhook = Webhook {
            tenant_id: ctx.tenant_id(),
            url,
            fingerprint: fingerprint(secret.as_bytes()),
            key_version,
            created_at,
            updated_at: now,
        };
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "webhook.set",
            ctx.actor(),
            now,
        )
        .target("webhook", &tenant)
        .data(json!({"url": webhook.url, "fingerprint": webhook.fingerprint}));
        self.store
            .put_webhook(ctx, &webhook, &sealed, audit)
            .await?;
        Ok(CreatedWebhook { webhook, secret })
    }

    /// Re-seals the webhook's signing secret with the tenant's `active` data key (the re-seal
    /// job after a tenant-key rotation); answers whether there was one to re-seal.
    pub(crate) async fn reseal_webhook_secret(&self, ctx: &TenantCtx, active: i64) -> Result<bool> {
        let Some((w, sealed)) = self.store.get_webhook(ctx).await? else {
            return Ok(false);
        };
        if w.key_version >= active {
            return Ok(false);
        }
        let id = ctx.tenant_id().to_string();
        let key = self.open_secret(ctx, SECRET_KIND, &id, &sealed).await?;
        let (resealed, version) = self.seal_secret(ctx, SECRET_KIND, &id, &key).await?;
        Ok(self
            .store
            .reseal_webhook(ctx, w.key_version, &resealed, version)
            .await?)
    }

    pub async fn delete_webhook(&self, ctx: &TenantCtx) -> Result<()> {
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "webhook.delete",
            ctx.actor(),
            Timestamp::now(),
        )
        .target("webhook", ctx.tenant_id());
        if self.store.delete_webhook(ctx, audit).await? {
            Ok(())
        } else {
            Err(ControlError::NotFound("webhook"))
        }
    }

    /// The worker's `usage.notify`: POSTs the notice to the tenant's webhook (none set: done,
    /// nothing to send). A failed delivery is retried by the queue with backoff.
    pub(crate) async fn notify_usage(&self, job: &Job) -> Result<(), JobError> {
        let failed = |why: String| JobError::Failed(format!("webhook delivery: {why}"));
        let ctx = TenantCtx::for_system_job(job.tenant_id, job.id);
        let now = Timestamp::now();
        let Some((webhook, sealed)) = self.store.get_webhook(&ctx).await? else {
            return Ok(self.store.complete_job(job, now).await?);
        };
        let notice: UsageNotice = serde_json::from_value(job.payload.clone())
            .map_err(|e| StoreError::Corrupt(format!("usage.notify payload: {e}")))?;
        let key = match self
            .open_secret(&ctx, SECRET_KIND, &job.tenant_id.to_string(), &sealed)
            .await
        {
            Ok(k) => k,
            Err(ControlError::Store(e)) => return Err(e.into()),
            Err(e) => return Err(failed(e.to_string())),
        };
        // Checked again at delivery: DNS may have changed since the URL was set.
        self.check_outbound_url("url", &webhook.url)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let body = serde_json::to_vec(&json!({
            "type": "usage.threshold_reached",
            "timestamp": now,
            "data": {"tenant_id": job.tenant_id, "period": notice.period, "quota": notice.quota,
                     "threshold": notice.threshold, "used": notice.used, "limit": notice.limit},
        }))
        .map_err(|e| failed(e.to_string()))?;
        let id = job.id.to_string();
        let ts = now.millis() / 1000;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| failed(e.to_string()))?;
        let res = client
            .post(&webhook.url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature(&key, &id, ts, &body))
            .body(body)
            .send()
            .await
            .map_err(|e| failed(e.without_url().to_string()))?;
        if !res.status().is_success() {
            return Err(failed(format!(
                "the endpoint answered HTTP {}",
                res.status().as_u16()
            )));
        }
        Ok(self.store.complete_job(job, now).await?)
    }
}
