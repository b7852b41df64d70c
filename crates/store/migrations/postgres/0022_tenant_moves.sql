-- A database per region: a tenant can move from one database to another (crates/store/src/moves.rs).
-- Each database marks the tenants arriving in it and those that moved away from it.
CREATE TABLE tenant_moves (
    tenant_id TEXT PRIMARY KEY,
    state     TEXT NOT NULL CHECK (state IN ('arriving', 'moved_away')),
    -- Where a tenant that moved away went.
    region    TEXT NOT NULL,
    at        BIGINT NOT NULL
);
ALTER TABLE tenant_moves ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_moves FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_moves
    USING (tenant_id = current_setting('app.tenant_id', true) OR current_setting('app.platform', true) = 'on')
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true) OR current_setting('app.platform', true) = 'on');
GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_moves TO agentplane_app;

-- Enters a tenant's scope when tenants can move (the server calls it after set_config):
-- refuses at once while a move of the tenant is in progress (it holds the tenant's lock
-- exclusively; a request is answered "retry", rather than holding a connection while it
-- waits), and refuses to go on if the tenant moved away, so nothing is written where it
-- would be lost.
CREATE FUNCTION agentplane_enter_tenant(t TEXT) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('app.tenant_id', t, true);
    IF NOT pg_try_advisory_xact_lock_shared(hashtextextended('agentplane_tenant:' || t, 0)) THEN
        RAISE EXCEPTION 'tenant % is moving to another database', t USING ERRCODE = 'AP409';
    END IF;
    IF EXISTS (SELECT 1 FROM tenant_moves m WHERE m.tenant_id = t AND m.state = 'moved_away') THEN
        RAISE EXCEPTION 'tenant % moved to another database', t USING ERRCODE = 'AP410';
    END IF;
END
$$;

-- The same for the tenants of a cross-tenant write (a settlement batch, which waits for a
-- move in progress rather than fail: it must land), taking the locks in one order.
CREATE FUNCTION agentplane_enter_tenants(ts TEXT[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE t TEXT;
BEGIN
    FOR t IN SELECT DISTINCT u FROM unnest(ts) AS u ORDER BY u LOOP
        PERFORM pg_advisory_xact_lock_shared(hashtextextended('agentplane_tenant:' || t, 0));
    END LOOP;
    SELECT m.tenant_id INTO t FROM tenant_moves m
        WHERE m.tenant_id = ANY(ts) AND m.state = 'moved_away' LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'tenant % moved to another database', t USING ERRCODE = 'AP410';
    END IF;
END
$$;
