//! `Idempotency-Key` handling for creating requests: the first request's response is stored
//! in the creation's own transaction; a repeat with the same key and body gets that response
//! again, a repeat with another body is refused, and concurrent repeats wait for the first.

use crate::{ControlError, ControlPlane, Result};
use agentplane_core::audit::canonical_json;
use agentplane_core::time::Timestamp;
use agentplane_core::DomainError;
use agentplane_store::IdempotencyRecord;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// An `Idempotency-Key` with the scope it is unique in (operation and caller).
#[derive(Clone, Debug)]
pub struct IdempotencyKey {
    pub scope: String,
    pub key: String,
}

impl IdempotencyKey {
    pub fn parse(scope: String, key: &str) -> Result<Self, DomainError> {
        if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(DomainError::invalid(
                "Idempotency-Key",
                "must be 1-255 visible ASCII characters",
            ));
        }
        Ok(Self {
            scope,
            key: key.to_owned(),
        })
    }
}

/// A creating request's response, fresh or replayed for a repeated `Idempotency-Key`.
#[derive(Clone, Debug)]
pub struct Replayable {
    pub status: u16,
    pub body: Value,
    pub replayed: bool,
}

/// The fingerprint of a request body (key order and whitespace do not matter).
pub(crate) fn request_hash(v: &Value) -> String {
    hex::encode(Sha256::digest(canonical_json(v).as_bytes()))
}

pub(crate) fn record(
    idem: Option<&IdempotencyKey>,
    hash: &str,
    status: u16,
    body: &Value,
    now: Timestamp,
) -> Option<IdempotencyRecord> {
    idem.map(|k| IdempotencyRecord {
        scope: k.scope.clone(),
        key: k.key.clone(),
        request_hash: hash.to_owned(),
        status,
        response: body.to_string(),
        created_at: now,
    })
}

fn replay(prev: IdempotencyRecord, hash: &str) -> Result<Replayable> {
    if prev.request_hash != hash {
        return Err(ControlError::IdempotencyKeyReused);
    }
    let body = serde_json::from_str(&prev.response)
        .map_err(|e| DomainError::invalid("body", e.to_string()))?;
    Ok(Replayable {
        status: prev.status,
        body,
        replayed: true,
    })
}

impl ControlPlane {
    /// The stored answer to an earlier request with this key, if any.
    pub(crate) async fn prior_answer(
        &self,
        idem: Option<&IdempotencyKey>,
        hash: &str,
    ) -> Result<Option<Replayable>> {
        let Some(k) = idem else { return Ok(None) };
        match self.store.get_idempotency(&k.scope, &k.key).await? {
            Some(prev) => replay(prev, hash).map(Some),
            None => Ok(None),
        }
    }

    /// After losing the race to a concurrent request with the same key: its answer.
    pub(crate) async fn winner_answer(
        &self,
        idem: Option<&IdempotencyKey>,
        hash: &str,
    ) -> Result<Replayable> {
        self.prior_answer(idem, hash)
            .await?
            .ok_or(ControlError::IdempotencyKeyReused)
    }
}
