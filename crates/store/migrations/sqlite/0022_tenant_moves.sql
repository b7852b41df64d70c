-- A database per region: a tenant can move from one database to another (crates/store/src/moves.rs).
-- Each database marks the tenants arriving in it and those that moved away from it.
CREATE TABLE tenant_moves (
    tenant_id TEXT PRIMARY KEY,
    state     TEXT NOT NULL CHECK (state IN ('arriving', 'moved_away')),
    -- Where a tenant that moved away went.
    region    TEXT NOT NULL,
    at        INTEGER NOT NULL
);
