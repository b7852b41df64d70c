-- Envelope encryption: each tenant's data keys (versioned), wrapped by the KMS's key-encryption
-- key. Only wrapped keys are stored. Deleting a tenant's rows here destroys its data keys
-- (crypto-shredding: every ciphertext sealed under them, backups included, becomes unreadable).
CREATE TABLE tenant_keys (
    tenant_id   TEXT NOT NULL REFERENCES tenants(tenant_id),
    version     INTEGER NOT NULL,
    kms         TEXT NOT NULL,
    kek_version INTEGER NOT NULL,
    wrapped     TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('active', 'retired')),
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, version)
);

-- Provider credentials: the secret is sealed with the tenant's data key (AEAD, associated data
-- = tenant, kind "provider_secret", provider id), so a copy in another row or tenant never opens.
CREATE TABLE provider_credentials (
    tenant_id   TEXT NOT NULL REFERENCES tenants(tenant_id),
    id          TEXT NOT NULL,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    base_url    TEXT NOT NULL,
    api_version TEXT,
    models      TEXT NOT NULL,
    secret      BLOB NOT NULL,
    key_version INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    version     INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, name)
);
