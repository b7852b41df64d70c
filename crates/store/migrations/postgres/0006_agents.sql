-- Agents: tenant-owned definitions (provider + model, system prompt, parameters). The provider
-- reference is a composite foreign key (tenant_id, provider_id): an agent can only ever point
-- at a provider of its own tenant, and a provider in use cannot be deleted.
CREATE TABLE agents (
    tenant_id     TEXT NOT NULL REFERENCES tenants(tenant_id),
    id            TEXT NOT NULL,
    name          TEXT NOT NULL,
    provider_id   TEXT NOT NULL,
    model         TEXT NOT NULL,
    system_prompt TEXT NOT NULL,
    params        TEXT NOT NULL,
    version       BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, name),
    FOREIGN KEY (tenant_id, provider_id) REFERENCES provider_credentials (tenant_id, id)
);

-- Every version of every agent, as it was.
CREATE TABLE agent_versions (
    tenant_id  TEXT NOT NULL,
    agent_id   TEXT NOT NULL,
    version    BIGINT NOT NULL,
    snapshot   TEXT NOT NULL,
    actor_kind TEXT NOT NULL,
    actor_id   TEXT NOT NULL,
    ts         BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, agent_id, version)
);

DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['agents', 'agent_versions']
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
GRANT SELECT, INSERT, UPDATE, DELETE ON agents TO agentplane_app;
GRANT SELECT, INSERT, DELETE ON agent_versions TO agentplane_app;
