-- Foundation schema (SQLite). Every tenant-owned table leads its primary key with tenant_id.
-- Timestamps are milliseconds since the Unix epoch; JSON is stored as text.

CREATE TABLE plans (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    monthly_messages    INTEGER NOT NULL,
    monthly_tokens      INTEGER NOT NULL,
    requests_per_minute INTEGER NOT NULL,
    max_concurrent_runs INTEGER NOT NULL,
    features            TEXT NOT NULL,
    created_at          INTEGER NOT NULL
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
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted_at INTEGER,
    version    INTEGER NOT NULL
);

CREATE TABLE tenant_settings (
    tenant_id  TEXT NOT NULL REFERENCES tenants(tenant_id),
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, key)
);

CREATE TABLE memberships (
    tenant_id    TEXT NOT NULL REFERENCES tenants(tenant_id),
    user_id      TEXT NOT NULL,
    email        TEXT NOT NULL,
    roles        TEXT NOT NULL,
    status       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, user_id),
    UNIQUE (tenant_id, email)
);

CREATE TABLE usage_counters (
    tenant_id         TEXT NOT NULL REFERENCES tenants(tenant_id),
    period            TEXT NOT NULL,
    messages_used     INTEGER NOT NULL DEFAULT 0,
    tokens_used       INTEGER NOT NULL DEFAULT 0,
    messages_reserved INTEGER NOT NULL DEFAULT 0,
    tokens_reserved   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, period)
);

CREATE TABLE usage_records (
    tenant_id  TEXT NOT NULL,
    id         TEXT NOT NULL,
    ts         INTEGER NOT NULL,
    agent_id   TEXT,
    model      TEXT NOT NULL,
    provider   TEXT NOT NULL,
    tokens_in  INTEGER NOT NULL,
    tokens_out INTEGER NOT NULL,
    latency_ms INTEGER NOT NULL,
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
    attempts     INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    run_at       INTEGER NOT NULL,
    lease_token  TEXT,
    lease_until  INTEGER,
    last_error   TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX jobs_by_id ON jobs (id);
CREATE INDEX jobs_due ON jobs (status, run_at);

-- Audit: one hash chain per tenant (tenant_id = the tenant) and one for the platform
-- (tenant_id = 'platform'). audit_heads serialises appends per chain.
CREATE TABLE audit_heads (
    tenant_id TEXT PRIMARY KEY,
    seq       INTEGER NOT NULL,
    hash      TEXT NOT NULL
);

CREATE TABLE audit_events (
    tenant_id   TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    id          TEXT NOT NULL,
    ts          INTEGER NOT NULL,
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

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;

-- Personal data of audit events, kept apart so erasure can remove it (with its salt)
-- without touching the chain.
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
    status       INTEGER NOT NULL,
    response     TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
);
