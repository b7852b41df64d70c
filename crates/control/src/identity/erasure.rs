//! Erasure of a data subject (GDPR article 17): everything the tenant holds about one
//! person, removed from every store in one transaction by a durable job, with a receipt
//! signed by the platform's access-token key (verifiable with the public JWKS).
//!
//! - Removed: the membership (profile, roles, local password, IdP id), sessions and refresh
//!   tokens (so delegated tokens too), invitations to the address, the personal data kept
//!   beside audit events, and the person's identity when they belong to no other tenant.
//!   API keys they created are revoked.
//! - Kept: the audit chain, pseudonymised. Events name a user id that now maps to no one, and
//!   their personal data is gone, so the chain still verifies. Usage records hold no personal
//!   data.
//! - The address travels to the job sealed with the tenant's key, and the job's payload is
//!   emptied in the erasing transaction. The receipt names the subject by
//!   `SHA-256(<tenant id>:<e-mail>)` only.
//! - Backups: a backup holds the subject's rows until it expires. Backups are sealed with the
//!   tenant's keys; see docs/identity.md.

use crate::{ControlError, ControlPlane, Result};
use agentplane_core::audit::{Chain, NewAuditEvent};
use agentplane_core::authz::TenantCtx;
use agentplane_core::job::{Job, JobKind};
use agentplane_core::time::Timestamp;
use agentplane_store::identity::{ErasureCounts, ErasureReceipt};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::json;
use sha2::{Digest, Sha256};

const SUBJECT_KIND: &str = "erasure_subject";

pub(crate) fn subject_hash(tenant: &str, email: &str) -> String {
    hex::encode(Sha256::digest(format!("{tenant}:{email}").as_bytes()))
}

impl ControlPlane {
    /// `admin.erase_user`: queues the erasure of the user; answers the job (its id is the
    /// receipt's id).
    pub async fn request_erasure(&self, ctx: &TenantCtx, user: &str) -> Result<Job> {
        let member = self.get_member(ctx, user).await?;
        if member.status == "active" && member.roles.iter().any(|r| r == "tenant_admin") {
            let filter = agentplane_store::MemberFilter {
                role: Some("tenant_admin".into()),
                status: Some("active".into()),
            };
            let admins = self
                .store
                .list_members(ctx, &filter, &agentplane_core::page::PageRequest::first(2))
                .await?;
            if admins.items.len() < 2 {
                return Err(ControlError::Conflict(
                    crate::error::ConflictKind::LastAdmin,
                ));
            }
        }
        let now = Timestamp::now();
        let mut job = Job::new(ctx.tenant_id(), JobKind::EraseUser, json!({}), now);
        let (sealed, _) = self
            .seal_secret(
                ctx,
                SUBJECT_KIND,
                &job.id.to_string(),
                member.email.as_bytes(),
            )
            .await?;
        job.payload = json!({"user_id": member.user_id, "subject": STANDARD.encode(sealed)});
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "user.erasure_requested",
            ctx.actor(),
            now,
        )
        .target("user", member.user_id)
        .data(json!({"job_id": job.id}));
        self.store.enqueue(ctx, &job, audit).await?;
        Ok(job)
    }

    /// The `user.erase` job.
    pub(crate) async fn run_erasure(&self, job: &Job) -> Result<()> {
        let ctx = TenantCtx::for_system_job(job.tenant_id, job.id);
        let Some(sealed) = job.payload["subject"]
            .as_str()
            .and_then(|s| STANDARD.decode(s).ok())
        else {
            // Already erased (the payload is emptied with the erasure): nothing left to do.
            return Ok(self.store.complete_job(job, Timestamp::now()).await?);
        };
        let email = self
            .open_secret(&ctx, SUBJECT_KIND, &job.id.to_string(), &sealed)
            .await?;
        let email = String::from_utf8_lossy(&email).into_owned();
        let tenant = job.tenant_id.to_string();
        let subject = subject_hash(&tenant, &email);
        // Exported artifacts may hold the person: they go first (idempotent on a retry).
        self.remove_export_artifacts(&ctx, None).await?;
        self.ensure_signing_key().await?;
        let signer = self.receipt_signer()?;
        let receipt_id = job.id.to_string();
        let sign = |counts: &ErasureCounts| {
            let receipt = json!({
                "type": "agentplane.erasure_receipt",
                "version": 1,
                "receipt_id": receipt_id,
                "tenant_id": tenant,
                "subject": subject,
                "erased_at": Timestamp::now(),
                "removed": counts,
                "retained": {
                    "audit_events": "pseudonymised: personal data removed, chain intact",
                    "usage_records": "hold no personal data",
                    "api_keys": "revoked; they name a user id that maps to no one",
                },
            });
            signer(&receipt).map(|sig| (receipt, sig))
        };
        let audit = NewAuditEvent::new(
            Chain::Tenant(job.tenant_id),
            "user.erased",
            ctx.actor(),
            Timestamp::now(),
        )
        .target("erasure_receipt", job.id);
        self.store
            .erase_subject(&ctx, job, &email, &subject, &sign, audit)
            .await?;
        Ok(())
    }

    pub async fn erasure_receipt(&self, ctx: &TenantCtx, id: &str) -> Result<ErasureReceipt> {
        self.store
            .erasure_receipt(ctx, id)
            .await?
            .ok_or(ControlError::NotFound("erasure receipt"))
    }
}
