//! Domain types of Agentplane. This crate does no I/O: no database, no network, no clock
//! reads except through the values callers pass in.
//!
//! The most important type here is [`authz::TenantCtx`]: every read or write of tenant-owned
//! data takes one, and the only ways to get one are [`authz::Principal::authorize_tenant`]
//! (after the caller's tenant access and permission were checked) and the named system
//! bypass [`authz::TenantCtx::for_system_job`].

pub mod action;
pub mod audit;
pub mod authz;
pub mod error;
pub mod ids;
pub mod job;
pub mod page;
pub mod plan;
pub mod tenant;
pub mod time;
pub mod usage;

pub use error::DomainError;
pub use ids::{AuditEventId, JobId, PlanId, TenantId, UsageRecordId, UserId};
