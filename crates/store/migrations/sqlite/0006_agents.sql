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
    version       INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, name),
    FOREIGN KEY (tenant_id, provider_id) REFERENCES provider_credentials (tenant_id, id)
);

-- Every version of every agent, as it was.
CREATE TABLE agent_versions (
    tenant_id  TEXT NOT NULL,
    agent_id   TEXT NOT NULL,
    version    INTEGER NOT NULL,
    snapshot   TEXT NOT NULL,
    actor_kind TEXT NOT NULL,
    actor_id   TEXT NOT NULL,
    ts         INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, agent_id, version)
);
