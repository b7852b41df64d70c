-- Per-tenant SSO connections (OIDC, SAML, LDAP). The secret (OIDC client secret, LDAP bind
-- password) is sealed with the tenant's data key (associated data: tenant, "sso_secret",
-- connection id); the rest of the configuration is not secret.
CREATE TABLE sso_connections (
    tenant_id    TEXT NOT NULL REFERENCES tenants(tenant_id),
    id           TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('oidc', 'saml', 'ldap')),
    name         TEXT NOT NULL,
    config       TEXT NOT NULL,
    role_mapping TEXT NOT NULL,
    jit          BOOLEAN NOT NULL,
    enabled      BOOLEAN NOT NULL,
    secret       BYTEA NOT NULL,
    key_version  BIGINT NOT NULL,
    fingerprint  TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, name)
);

-- SAML assertion ids already consumed, until they expire: a replayed assertion is refused.
CREATE TABLE sso_replay (
    tenant_id    TEXT NOT NULL REFERENCES tenants(tenant_id),
    assertion_id TEXT NOT NULL,
    expires_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, assertion_id)
);

-- A sign-in started at an OIDC provider, until its callback: found by the SHA-256 of the
-- `state`, used once. The nonce and PKCE verifier are sealed with the tenant's key.
CREATE TABLE sso_states (
    tenant_id     TEXT NOT NULL REFERENCES tenants(tenant_id),
    state_hash    TEXT NOT NULL UNIQUE,
    connection_id TEXT NOT NULL,
    pending       BYTEA NOT NULL,
    expires_at    BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, state_hash)
);

DO $$
DECLARE t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['sso_connections', 'sso_states', 'sso_replay']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
            USING (tenant_id = current_setting('app.tenant_id', true) OR current_setting('app.platform', true) = 'on')
            WITH CHECK (tenant_id = current_setting('app.tenant_id', true) OR current_setting('app.platform', true) = 'on')$p$, t);
    END LOOP;
END
$$;
GRANT SELECT, INSERT, UPDATE, DELETE ON sso_connections, sso_states, sso_replay TO agentplane_app;
