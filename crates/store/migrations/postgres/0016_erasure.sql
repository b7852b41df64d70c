-- Signed receipts of data-subject erasures (GDPR art. 17): what was removed from which
-- store. The subject is named only by a hash of the tenant and the e-mail.
CREATE TABLE erasure_receipts (
    tenant_id  TEXT NOT NULL REFERENCES tenants(tenant_id),
    id         TEXT NOT NULL,
    subject    TEXT NOT NULL,
    receipt    TEXT NOT NULL,
    signature  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
ALTER TABLE erasure_receipts ENABLE ROW LEVEL SECURITY;
ALTER TABLE erasure_receipts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON erasure_receipts
    USING (tenant_id = current_setting('app.tenant_id', true) OR current_setting('app.platform', true) = 'on')
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true) OR current_setting('app.platform', true) = 'on');
GRANT SELECT, INSERT, DELETE ON erasure_receipts TO agentplane_app;
