-- A tenant imported as a new tenant (another id: an import with a new slug, a restore) keeps
-- its audit chain, whose events up to the import were hashed under the exported tenant's id.
-- Verification hashes them under that id again: the chain stays verifiable. A chain imported
-- again under a third id has a segment per id it was hashed under.
CREATE TABLE audit_origins (
    tenant_id TEXT NOT NULL,
    origin    TEXT NOT NULL,
    up_to_seq INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, up_to_seq)
);
