-- Tenant branding. The logo's bytes live in the object store under the tenant's prefix; this
-- row points at them by content hash. Custom domains are unique across tenants.
CREATE TABLE tenant_branding (
    tenant_id         TEXT PRIMARY KEY REFERENCES tenants(tenant_id),
    product_name      TEXT,
    primary_color     TEXT,
    accent_color      TEXT,
    custom_domain     TEXT UNIQUE,
    logo_content_type TEXT,
    logo_sha256       TEXT,
    logo_size         BIGINT,
    version           BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);

ALTER TABLE tenant_branding ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_branding FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_branding
    USING (tenant_id = current_setting('app.tenant_id', true) OR current_setting('app.platform', true) = 'on')
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true) OR current_setting('app.platform', true) = 'on');
GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_branding TO agentplane_app;
