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
    logo_size         INTEGER,
    version           INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);
