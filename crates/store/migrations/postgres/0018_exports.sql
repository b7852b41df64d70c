-- Exports of a tenant's data (and, later, its backups): what was asked, the artifact's
-- manifest and where the sealed artifact lives in the object store.
CREATE TABLE exports (
    tenant_id    TEXT NOT NULL REFERENCES tenants(tenant_id),
    id           TEXT NOT NULL,
    export_type  TEXT NOT NULL,
    format       TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'ready', 'failed', 'deleted')),
    params       TEXT NOT NULL,
    manifest     TEXT,
    object_key   TEXT,
    size         BIGINT,
    sha256       TEXT,
    job_id       TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    completed_at BIGINT,
    expires_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
ALTER TABLE exports ENABLE ROW LEVEL SECURITY;
ALTER TABLE exports FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON exports
    USING (tenant_id = current_setting('app.tenant_id', true) OR current_setting('app.platform', true) = 'on')
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true) OR current_setting('app.platform', true) = 'on');
GRANT SELECT, INSERT, UPDATE, DELETE ON exports TO agentplane_app;
