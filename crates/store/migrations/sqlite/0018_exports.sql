-- Exports of a tenant's data (and, later, its backups): what was asked, the artifact's
-- manifest and where the sealed artifact lives in the object store.
CREATE TABLE exports (
    tenant_id    TEXT NOT NULL REFERENCES tenants(tenant_id),
    id           TEXT NOT NULL,
    export_type  TEXT NOT NULL,
    format       TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'ready', 'failed', 'deleted')),
    params       TEXT NOT NULL,
    manifest     TEXT,
    object_key   TEXT,
    size         INTEGER,
    sha256       TEXT,
    job_id       TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    completed_at INTEGER,
    expires_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
