-- SCIM 2.0 provisioning: one bearer token per tenant (only its SHA-256 kept; the public id
-- finds it before the tenant is known), and the IdP's id of each member.
CREATE TABLE scim_tokens (
    tenant_id   TEXT NOT NULL REFERENCES tenants(tenant_id),
    id          TEXT NOT NULL,
    public_id   TEXT NOT NULL UNIQUE,
    secret_hash TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
ALTER TABLE memberships ADD COLUMN external_id TEXT;

ALTER TABLE scim_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE scim_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON scim_tokens
    USING (tenant_id = current_setting('app.tenant_id', true) OR current_setting('app.platform', true) = 'on')
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true) OR current_setting('app.platform', true) = 'on');
GRANT SELECT, INSERT, UPDATE, DELETE ON scim_tokens TO agentplane_app;
