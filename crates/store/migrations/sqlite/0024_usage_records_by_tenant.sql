-- Usage records are stored in (tenant, time) order, the order every tenant's read and erasure
-- takes, instead of in insertion order with two indexes that each start with the tenant.
-- A settlement batch over many tenants then dirties one page per tenant instead of two, and
-- the write-ahead log carries every dirtied page whole. Record ids are UUIDv7 (time-ordered)
-- and unique by construction; the key keeps them unique per tenant and time.
CREATE TABLE usage_records_by_tenant (
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
    PRIMARY KEY (tenant_id, ts, id)
) WITHOUT ROWID;

INSERT INTO usage_records_by_tenant (tenant_id, id, ts, agent_id, model, provider, tokens_in,
    tokens_out, latency_ms, status, trace_id)
SELECT tenant_id, id, ts, agent_id, model, provider, tokens_in, tokens_out, latency_ms, status,
    trace_id
FROM usage_records;

DROP TABLE usage_records;
ALTER TABLE usage_records_by_tenant RENAME TO usage_records;
CREATE INDEX usage_records_by_time ON usage_records (ts, tenant_id, id);
