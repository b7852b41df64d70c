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
    messages   BIGINT NOT NULL CHECK (messages >= 0),
    tokens     BIGINT NOT NULL CHECK (tokens >= 0),
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, period, id)
);

ALTER TABLE quota_leases ENABLE ROW LEVEL SECURITY;
ALTER TABLE quota_leases FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON quota_leases
    USING (tenant_id = current_setting('app.tenant_id', true) OR current_setting('app.platform', true) = 'on')
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true) OR current_setting('app.platform', true) = 'on');
GRANT SELECT, INSERT, UPDATE, DELETE ON quota_leases TO agentplane_app;
