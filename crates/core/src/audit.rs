//! Audit events and their hash chain.
//!
//! Each chain (one per tenant, one for the platform) is a sequence `seq = 1, 2, ...` where
//! `hash = SHA-256(canonical JSON of the event's hashed fields, including prev_hash)`.
//! Personal data never enters the hashed bytes: it is kept beside the event (and can be
//! erased) while the chain covers `pii_digest = SHA-256(salt || canonical(pii))`, the salt
//! being erased with the data so the digest cannot be brute-forced afterwards.

use crate::authz::Actor;
use crate::time::Timestamp;
use crate::{AuditEventId, TenantId};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

/// The chain key of platform-level events (tenant chains use the tenant id).
pub const PLATFORM_CHAIN: &str = "platform";
/// `prev_hash` of the first event of every chain.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chain {
    Platform,
    Tenant(TenantId),
}

impl Chain {
    pub fn key(self) -> String {
        match self {
            Self::Platform => PLATFORM_CHAIN.to_owned(),
            Self::Tenant(t) => t.to_string(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Denied,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Denied => "denied",
            Self::Failure => "failure",
        }
    }
}

/// An event about to be appended. The store assigns `seq` and `prev_hash` inside the same
/// transaction as the change it records.
#[derive(Clone, Debug)]
pub struct NewAuditEvent {
    pub id: AuditEventId,
    pub ts: Timestamp,
    pub chain: Chain,
    pub action: String,
    pub actor: Actor,
    pub target_kind: Option<String>,
    pub target_id: Option<String>,
    pub outcome: Outcome,
    /// Non-personal details: hashed.
    pub data: Value,
    /// Personal details (e-mail addresses, names, IPs): stored beside, not hashed.
    pub pii: Option<Value>,
    pub trace_id: Option<String>,
}

impl NewAuditEvent {
    pub fn new(chain: Chain, action: &str, actor: &Actor, ts: Timestamp) -> Self {
        Self {
            id: AuditEventId::new(),
            ts,
            chain,
            action: action.to_owned(),
            actor: actor.clone(),
            target_kind: None,
            target_id: None,
            outcome: Outcome::Success,
            data: Value::Object(Default::default()),
            pii: None,
            trace_id: None,
        }
    }
    pub fn target(mut self, kind: &str, id: impl ToString) -> Self {
        self.target_kind = Some(kind.to_owned());
        self.target_id = Some(id.to_string());
        self
    }
    pub fn data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }
    pub fn pii(mut self, pii: Value) -> Self {
        self.pii = Some(pii);
        self
    }
    pub fn outcome(mut self, o: Outcome) -> Self {
        self.outcome = o;
        self
    }

    /// Fixes the event's place in its chain and computes its hash.
    pub fn seal(self, seq: i64, prev_hash: &str, pii_salt: &[u8]) -> (AuditEvent, Option<Value>) {
        let pii_digest = self.pii.as_ref().map(|p| pii_digest(pii_salt, p));
        let mut ev = AuditEvent {
            chain: self.chain.key(),
            seq,
            id: self.id,
            ts: self.ts,
            action: self.action,
            actor_kind: self.actor.kind().to_owned(),
            actor_id: self.actor.id().to_owned(),
            target_kind: self.target_kind,
            target_id: self.target_id,
            outcome: self.outcome.as_str().to_owned(),
            data: self.data,
            pii_digest,
            trace_id: self.trace_id,
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
            pii: None,
        };
        ev.hash = ev.compute_hash();
        (ev, self.pii)
    }
}

/// A stored audit event.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct AuditEvent {
    /// The tenant id, or `platform`.
    pub chain: String,
    pub seq: i64,
    pub id: AuditEventId,
    pub ts: Timestamp,
    pub action: String,
    pub actor_kind: String,
    pub actor_id: String,
    pub target_kind: Option<String>,
    pub target_id: Option<String>,
    pub outcome: String,
    #[schema(value_type = Object)]
    pub data: Value,
    pub pii_digest: Option<String>,
    pub trace_id: Option<String>,
    pub prev_hash: String,
    pub hash: String,
    /// The personal details, while they have not been erased. Not part of the hash.
    #[schema(value_type = Option<Object>)]
    pub pii: Option<Value>,
}

impl AuditEvent {
    /// SHA-256 over the canonical JSON of every hashed field.
    pub fn compute_hash(&self) -> String {
        let hashed = serde_json::json!({
            "v": 1,
            "chain": self.chain,
            "seq": self.seq,
            "id": self.id.to_string(),
            "ts": self.ts.millis(),
            "action": self.action,
            "actor_kind": self.actor_kind,
            "actor_id": self.actor_id,
            "target_kind": self.target_kind,
            "target_id": self.target_id,
            "outcome": self.outcome,
            "data": self.data,
            "pii_digest": self.pii_digest,
            "trace_id": self.trace_id,
            "prev_hash": self.prev_hash,
        });
        hex::encode(Sha256::digest(canonical_json(&hashed).as_bytes()))
    }
}

pub fn pii_digest(salt: &[u8], pii: &Value) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(canonical_json(pii).as_bytes());
    hex::encode(h.finalize())
}

/// JSON with object keys sorted at every level and no whitespace, independent of how
/// `serde_json` was compiled (`preserve_order` or not) and of how the value was stored.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(k) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Why a chain does not verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainBreak {
    /// `seq` is not the previous one plus one (an event was removed or inserted).
    Gap { expected: i64, found: i64 },
    /// `prev_hash` does not match the previous event's hash.
    PrevHash { seq: i64 },
    /// The stored hash does not match the event's content.
    Hash { seq: i64 },
    /// The personal details kept beside the event do not match its digest.
    PiiDigest { seq: i64 },
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gap { expected, found } => {
                write!(f, "expected seq {expected}, found seq {found}")
            }
            Self::PrevHash { seq } => write!(
                f,
                "seq {seq}: prev_hash does not match the hash of seq {}",
                seq - 1
            ),
            Self::Hash { seq } => write!(f, "seq {seq}: content does not match its hash"),
            Self::PiiDigest { seq } => {
                write!(f, "seq {seq}: personal data does not match its digest")
            }
        }
    }
}

/// Incremental verifier: feed events in `seq` order.
#[derive(Debug)]
pub struct ChainVerifier {
    next_seq: i64,
    prev_hash: String,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            next_seq: 1,
            prev_hash: GENESIS_HASH.to_owned(),
        }
    }
}

impl ChainVerifier {
    /// `pii` is the personal data with its salt, if it is still held.
    pub fn check(
        &mut self,
        ev: &AuditEvent,
        pii: Option<(&[u8], &Value)>,
    ) -> Result<(), ChainBreak> {
        if ev.seq != self.next_seq {
            return Err(ChainBreak::Gap {
                expected: self.next_seq,
                found: ev.seq,
            });
        }
        if ev.prev_hash != self.prev_hash {
            return Err(ChainBreak::PrevHash { seq: ev.seq });
        }
        if ev.compute_hash() != ev.hash {
            return Err(ChainBreak::Hash { seq: ev.seq });
        }
        if let Some((salt, value)) = pii {
            if ev.pii_digest.as_deref() != Some(pii_digest(salt, value).as_str()) {
                return Err(ChainBreak::PiiDigest { seq: ev.seq });
            }
        }
        self.next_seq += 1;
        self.prev_hash.clone_from(&ev.hash);
        Ok(())
    }
    pub fn verified(&self) -> i64 {
        self.next_seq - 1
    }
    /// The hash of the last verified event (the genesis hash before any).
    pub fn last_hash(&self) -> &str {
        &self.prev_hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(n: i64) -> Vec<AuditEvent> {
        let actor = Actor::System {
            component: "t".into(),
        };
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let (ev, _) =
                    NewAuditEvent::new(Chain::Platform, "x.y", &actor, Timestamp::from_millis(seq))
                        .data(json!({"b": 1, "a": [seq]}))
                        .pii(json!({"email": "a@b.c"}))
                        .seal(seq, &prev, b"salt");
                prev.clone_from(&ev.hash);
                ev
            })
            .collect()
    }

    #[test]
    fn canonical_json_sorts_keys_recursively() {
        let v: Value = serde_json::from_str(r#"{"b":{"z":1,"a":[{"y":2,"x":1}]},"a":"\u00e9"}"#)
            .unwrap_or_default();
        assert_eq!(
            canonical_json(&v),
            r#"{"a":"é","b":{"a":[{"x":1,"y":2}],"z":1}}"#
        );
    }

    #[test]
    fn intact_chain_verifies_and_every_tamper_is_named() {
        let events = chain(4);
        let mut v = ChainVerifier::default();
        for e in &events {
            assert_eq!(
                v.check(e, Some((b"salt", &json!({"email": "a@b.c"})))),
                Ok(())
            );
        }
        assert_eq!(v.verified(), 4);

        let check_all = |evs: &[AuditEvent]| {
            let mut v = ChainVerifier::default();
            evs.iter().try_for_each(|e| v.check(e, None))
        };
        let mut edited = events.clone();
        edited[2].data = json!({"b": 2});
        assert_eq!(check_all(&edited), Err(ChainBreak::Hash { seq: 3 }));

        let mut rehashed = events.clone();
        rehashed[1].action = "forged".into();
        rehashed[1].hash = rehashed[1].compute_hash();
        assert_eq!(check_all(&rehashed), Err(ChainBreak::PrevHash { seq: 3 }));

        let mut removed = events.clone();
        removed.remove(1);
        assert_eq!(
            check_all(&removed),
            Err(ChainBreak::Gap {
                expected: 2,
                found: 3
            })
        );

        let mut v = ChainVerifier::default();
        assert_eq!(
            v.check(&events[0], Some((b"salt", &json!({"email": "other@b.c"})))),
            Err(ChainBreak::PiiDigest { seq: 1 })
        );
    }
}
