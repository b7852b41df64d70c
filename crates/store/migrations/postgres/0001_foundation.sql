-- Foundation schema (PostgreSQL). Run by the owner (`agentplane migrate`); the server runs as
-- the role agentplane_app, which owns nothing, has no BYPASSRLS, and sees tenant rows only
-- through the row-level-security policies below.
-- Every tenant-owned table leads its primary key with tenant_id (distributable on Citus).
-- Timestamps are milliseconds since the Unix epoch; JSON is stored as text, byte for byte.

DO $$
BEGIN
    CREATE ROLE agentplane_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

CREATE TABLE plans (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    monthly_messages    BIGINT NOT NULL,
    monthly_tokens      BIGINT NOT NULL,
    requests_per_minute BIGINT NOT NULL,
    max_concurrent_runs BIGINT NOT NULL,
    features            TEXT NOT NULL,
    created_at          BIGINT NOT NULL
);

INSERT INTO plans VALUES
    ('free', 'Free', 1000, 1000000, 60, 4, '[]', 0),
    ('pro', 'Pro', 100000, 100000000, 600, 32, '["sso","audit_export"]', 0);

CREATE TABLE tenants (
    tenant_id  TEXT PRIMARY KEY,
    slug       TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    plan_id    TEXT NOT NULL REFERENCES plans(id),
    status     TEXT NOT NULL CHECK (status IN ('provisioning', 'active', 'suspended', 'deleted')),
    region     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT,
    version    BIGINT NOT NULL
);

CREATE TABLE tenant_settings (
    tenant_id  TEXT NOT NULL REFERENCES tenants(tenant_id),
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, key)
);

CREATE TABLE memberships (
    tenant_id    TEXT NOT NULL REFERENCES tenants(tenant_id),
    user_id      TEXT NOT NULL,
    email        TEXT NOT NULL,
    roles        TEXT NOT NULL,
    status       TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, user_id),
    UNIQUE (tenant_id, email)
);

CREATE TABLE usage_counters (
    tenant_id         TEXT NOT NULL REFERENCES tenants(tenant_id),
    period            TEXT NOT NULL,
    messages_used     BIGINT NOT NULL DEFAULT 0,
    tokens_used       BIGINT NOT NULL DEFAULT 0,
    messages_reserved BIGINT NOT NULL DEFAULT 0,
    tokens_reserved   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, period)
);

CREATE TABLE usage_records (
    tenant_id  TEXT NOT NULL,
    id         TEXT NOT NULL,
    ts         BIGINT NOT NULL,
    agent_id   TEXT,
    model      TEXT NOT NULL,
    provider   TEXT NOT NULL,
    tokens_in  BIGINT NOT NULL,
    tokens_out BIGINT NOT NULL,
    latency_ms BIGINT NOT NULL,
    status     TEXT NOT NULL,
    trace_id   TEXT,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX usage_records_by_time ON usage_records (ts, tenant_id, id);
CREATE INDEX usage_records_by_tenant_time ON usage_records (tenant_id, ts, id);

CREATE TABLE jobs (
    tenant_id    TEXT NOT NULL,
    id           TEXT NOT NULL,
    kind         TEXT NOT NULL,
    payload      TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'dead')),
    attempts     BIGINT NOT NULL,
    max_attempts BIGINT NOT NULL,
    run_at       BIGINT NOT NULL,
    lease_token  TEXT,
    lease_until  BIGINT,
    last_error   TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX jobs_by_id ON jobs (id);
CREATE INDEX jobs_due ON jobs (status, run_at);

CREATE TABLE audit_heads (
    tenant_id TEXT PRIMARY KEY,
    seq       BIGINT NOT NULL,
    hash      TEXT NOT NULL
);

CREATE TABLE audit_events (
    tenant_id   TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    id          TEXT NOT NULL,
    ts          BIGINT NOT NULL,
    action      TEXT NOT NULL,
    actor_kind  TEXT NOT NULL,
    actor_id    TEXT NOT NULL,
    target_kind TEXT,
    target_id   TEXT,
    outcome     TEXT NOT NULL,
    data        TEXT NOT NULL,
    pii_digest  TEXT,
    trace_id    TEXT,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
CREATE INDEX audit_events_by_time ON audit_events (tenant_id, ts);

CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_events_no_update_delete BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

CREATE TABLE audit_pii (
    tenant_id TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    salt      TEXT NOT NULL,
    pii       TEXT NOT NULL,
    PRIMARY KEY (tenant_id, event_id)
);

CREATE TABLE idempotency_keys (
    scope        TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status       BIGINT NOT NULL,
    response     TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);

-- Row-level security: a tenant's rows are visible only while the transaction has set
-- app.tenant_id to that tenant, or has explicitly entered the platform scope
-- (app.platform = 'on', used by the audited operator paths and the job worker's claim).
DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenants', 'tenant_settings', 'memberships', 'usage_counters',
                             'usage_records', 'jobs', 'audit_heads', 'audit_events', 'audit_pii']
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

GRANT USAGE ON SCHEMA public TO agentplane_app;
GRANT SELECT, INSERT ON plans TO agentplane_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON tenants, tenant_settings, memberships, usage_counters,
    usage_records, jobs, audit_heads, audit_pii, idempotency_keys TO agentplane_app;
-- The audit log: append and read only (and the trigger refuses UPDATE/DELETE for everyone).
GRANT SELECT, INSERT ON audit_events TO agentplane_app;
GRANT SELECT ON _sqlx_migrations TO agentplane_app;
