-- Signed receipts of data-subject erasures (GDPR art. 17): what was removed from which
-- store. The subject is named only by a hash of the tenant and the e-mail.
CREATE TABLE erasure_receipts (
    tenant_id  TEXT NOT NULL REFERENCES tenants(tenant_id),
    id         TEXT NOT NULL,
    subject    TEXT NOT NULL,
    receipt    TEXT NOT NULL,
    signature  TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
