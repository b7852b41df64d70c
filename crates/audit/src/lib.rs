//! The audit plane: reading a tenant's trail (which is itself recorded) and verifying every
//! hash chain. Appending happens in the store, in the transaction of each change.

use agentplane_core::audit::{AuditEvent, Chain, ChainBreak, ChainVerifier, NewAuditEvent};
use agentplane_core::authz::{PlatformCtx, TenantCtx};
use agentplane_core::page::{Page, PageRequest};
use agentplane_core::time::Timestamp;
use agentplane_store::{AuditFilter, Store, StoreError};
use serde::Serialize;
use serde_json::json;

/// Reads a page of the tenant's audit trail, newest first, and records who read it, with
/// which filters and for what stated purpose, in the same transaction.
pub async fn read_trail(
    store: &dyn Store,
    ctx: &TenantCtx,
    filter: &AuditFilter,
    page: &PageRequest,
    purpose: Option<&str>,
) -> Result<Page<AuditEvent>, StoreError> {
    let purpose: Option<String> = purpose.map(|p| p.chars().take(500).collect());
    let read = NewAuditEvent::new(
        Chain::Tenant(ctx.tenant_id()),
        "audit.read",
        ctx.actor(),
        Timestamp::now(),
    )
    .target("audit_trail", ctx.tenant_id())
    .data(json!({
        "filter": {
            "action": filter.action,
            "actor_id": filter.actor_id,
            "from": filter.from,
            "to": filter.to,
        },
        "cursor": page.after,
        "limit": page.limit,
        "purpose": purpose,
    }));
    store.list_audit(ctx, filter, page, read).await
}

#[derive(Clone, Debug, Serialize)]
pub struct ChainReport {
    pub chain: String,
    pub events: i64,
    #[serde(skip)]
    pub last_hash: String,
    /// The first broken link, if any.
    pub broken: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub chains: Vec<ChainReport>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.chains.iter().all(|c| c.broken.is_none())
    }
    pub fn events(&self) -> i64 {
        self.chains.iter().map(|c| c.events).sum()
    }
}

/// Recomputes every chain from its first event, streaming a page at a time.
pub async fn verify_all(
    store: &dyn Store,
    platform: &PlatformCtx,
) -> Result<VerifyReport, StoreError> {
    let mut chains = Vec::new();
    for (chain, head) in store.audit_chain_heads(platform).await? {
        let mut report = verify_chain(store, platform, &chain).await?;
        let Some((head_seq, head_hash)) = head else {
            report.broken.get_or_insert_with(|| {
                "the chain has events but its head record is missing".to_owned()
            });
            chains.push(report);
            continue;
        };
        if report.broken.is_none() && (report.events != head_seq || report.last_hash != head_hash) {
            report.broken = Some(format!(
                "the chain ends at seq {} but its head records seq {head_seq}: events were removed from its end",
                report.events
            ));
        }
        chains.push(report);
    }
    Ok(VerifyReport { chains })
}

pub async fn verify_chain(
    store: &dyn Store,
    platform: &PlatformCtx,
    chain: &str,
) -> Result<ChainReport, StoreError> {
    const PAGE: u32 = 1000;
    let mut v = ChainVerifier::default();
    let mut after = 0;
    // `<chain>@<database>`: a copy a tenant left behind in a database it moved away from.
    let events_of = chain.split_once('@').map_or(chain, |(c, _)| c);
    // An imported chain starts with the events of the tenant it was exported from, hashed
    // under that tenant's id; once its own events begin, no other chain's may follow.
    let mut own_seen = false;
    let broken = loop {
        let page = store.audit_chain_page(platform, chain, after, PAGE).await?;
        let Some(last) = page.last() else { break None };
        after = last.0.seq;
        let res = page.iter().try_for_each(|(ev, pii)| {
            if ev.chain == events_of {
                own_seen = true;
            } else if own_seen || ev.chain == agentplane_core::audit::PLATFORM_CHAIN {
                return Err(ChainBreak::Hash { seq: ev.seq });
            }
            v.check(ev, pii.as_ref().map(|p| (p.salt.as_slice(), &p.value)))
        });
        if let Err(b) = res {
            break Some(b.to_string());
        }
        if page.len() < PAGE as usize {
            break None;
        }
    };
    Ok(ChainReport {
        chain: chain.to_owned(),
        events: v.verified(),
        last_hash: v.last_hash().to_owned(),
        broken,
    })
}

/// The chain key of a tenant, for callers that name chains.
pub fn tenant_chain(ctx: &TenantCtx) -> String {
    Chain::Tenant(ctx.tenant_id()).key()
}
