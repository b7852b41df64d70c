-- SCIM 2.0 provisioning: one bearer token per tenant (only its SHA-256 kept; the public id
-- finds it before the tenant is known), and the IdP's id of each member.
CREATE TABLE scim_tokens (
    tenant_id   TEXT NOT NULL REFERENCES tenants(tenant_id),
    id          TEXT NOT NULL,
    public_id   TEXT NOT NULL UNIQUE,
    secret_hash TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
ALTER TABLE memberships ADD COLUMN external_id TEXT;
