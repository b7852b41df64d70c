-- Quota leases: the share of a tenant's monthly quota that one server process may admit from
-- memory. usage_counters.*_reserved is always the sum of the period's leases, and a lease is
-- only ever granted by a conditional update that keeps used + reserved within the plan, so the
-- leases of all processes together can never overshoot it. Settling a run decrements its lease
-- and increments *_used in the same transaction as the run's usage record; a lease whose
-- process died expires and is returned unspent by the next grant for that tenant.
CREATE TABLE quota_leases (
    tenant_id  TEXT NOT NULL REFERENCES tenants(tenant_id),
    period     TEXT NOT NULL,
    id         TEXT NOT NULL,
    holder     TEXT NOT NULL,
    messages   INTEGER NOT NULL CHECK (messages >= 0),
    tokens     INTEGER NOT NULL CHECK (tokens >= 0),
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, period, id)
);
