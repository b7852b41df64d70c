-- Tenant API keys. Only the SHA-256 of the secret is stored; the public id (unique across the
-- deployment) finds the key before its tenant is known.
CREATE TABLE api_keys (
    tenant_id    TEXT NOT NULL REFERENCES tenants(tenant_id),
    id           TEXT NOT NULL,
    public_id    TEXT NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    secret_hash  TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    last_used_at INTEGER,
    PRIMARY KEY (tenant_id, id)
);
