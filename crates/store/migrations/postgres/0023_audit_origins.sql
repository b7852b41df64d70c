-- A tenant imported as a new tenant (another id: an import with a new slug, a restore) keeps
-- its audit chain, whose events up to the import were hashed under the exported tenant's id.
-- Verification hashes them under that id again: the chain stays verifiable. A chain imported
-- again under a third id has a segment per id it was hashed under.
CREATE TABLE audit_origins (
    tenant_id TEXT NOT NULL,
    origin    TEXT NOT NULL,
    up_to_seq BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, up_to_seq)
);
ALTER TABLE audit_origins ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_origins FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_origins
    USING (tenant_id = current_setting('app.tenant_id', true) OR current_setting('app.platform', true) = 'on')
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true) OR current_setting('app.platform', true) = 'on');
GRANT SELECT, INSERT, DELETE ON audit_origins TO agentplane_app;
