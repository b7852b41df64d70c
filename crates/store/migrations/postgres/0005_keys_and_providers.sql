-- Envelope encryption: each tenant's data keys (versioned), wrapped by the KMS's key-encryption
-- key. Only wrapped keys are stored. Deleting a tenant's rows here destroys its data keys
-- (crypto-shredding: every ciphertext sealed under them, backups included, becomes unreadable).
CREATE TABLE tenant_keys (
    tenant_id   TEXT NOT NULL REFERENCES tenants(tenant_id),
    version     BIGINT NOT NULL,
    kms         TEXT NOT NULL,
    kek_version BIGINT NOT NULL,
    wrapped     TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('active', 'retired')),
    created_at  BIGINT NOT NULL,
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
    secret      BYTEA NOT NULL,
    key_version BIGINT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    version     BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, name)
);

DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenant_keys', 'provider_credentials']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
            USING (tenant_id = current_setting('app.tenant_id', true)
                   OR current_setting('app.platform', true) = 'on')
            WITH CHECK (tenant_id = current_setting('app.tenant_id', true)
                   OR current_setting('app.platform', true) = 'on')$p$, t);
    END LOOP;
END
$$;
GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_keys, provider_credentials TO agentplane_app;
