-- Jobs report progress (percent and a message), renew their lease while they work
-- (heartbeats), and may be cancelled.
ALTER TABLE jobs ADD COLUMN progress_pct BIGINT;
ALTER TABLE jobs ADD COLUMN progress_message TEXT;
ALTER TABLE jobs ADD COLUMN cancel_requested BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'dead', 'cancelled'));
CREATE INDEX jobs_by_tenant ON jobs (tenant_id, created_at, id);

-- Fairness: claims go to the tenant served longest ago, so one tenant's backlog never starves
-- another's.
CREATE TABLE job_tenants (
    tenant_id       TEXT PRIMARY KEY,
    last_claimed_at BIGINT NOT NULL
);
ALTER TABLE job_tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE job_tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON job_tenants
    USING (tenant_id = current_setting('app.tenant_id', true) OR current_setting('app.platform', true) = 'on')
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true) OR current_setting('app.platform', true) = 'on');
GRANT SELECT, INSERT, UPDATE, DELETE ON job_tenants TO agentplane_app;
