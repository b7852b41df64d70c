-- Jobs report progress (percent and a message), renew their lease while they work
-- (heartbeats), and may be cancelled. SQLite cannot alter a CHECK: the table is rebuilt.
CREATE TABLE jobs_new (
    tenant_id        TEXT NOT NULL,
    id               TEXT NOT NULL,
    kind             TEXT NOT NULL,
    payload          TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'dead', 'cancelled')),
    attempts         INTEGER NOT NULL,
    max_attempts     INTEGER NOT NULL,
    run_at           INTEGER NOT NULL,
    lease_token      TEXT,
    lease_until      INTEGER,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    progress_pct     INTEGER,
    progress_message TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, id)
);
INSERT INTO jobs_new (tenant_id, id, kind, payload, status, attempts, max_attempts, run_at,
                      lease_token, lease_until, last_error, created_at, updated_at)
    SELECT tenant_id, id, kind, payload, status, attempts, max_attempts, run_at,
           lease_token, lease_until, last_error, created_at, updated_at FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
CREATE UNIQUE INDEX jobs_by_id ON jobs (id);
CREATE INDEX jobs_due ON jobs (status, run_at);
CREATE INDEX jobs_by_tenant ON jobs (tenant_id, created_at, id);

-- Fairness: claims go to the tenant served longest ago, so one tenant's backlog never starves
-- another's.
CREATE TABLE job_tenants (
    tenant_id       TEXT PRIMARY KEY,
    last_claimed_at INTEGER NOT NULL
);
