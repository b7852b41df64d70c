-- Every server process caches API-key lookups in memory (crates/store/src/key_cache.rs). What a
-- lookup returns changes only with these columns; a change is announced, at commit, on the
-- channel agentplane_auth with the tenant's id, to every process listening, whoever made it
-- (a server, the worker, an operator in psql).
CREATE FUNCTION agentplane_auth_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('agentplane_auth', OLD.tenant_id);
    ELSE
        PERFORM pg_notify('agentplane_auth', NEW.tenant_id);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_auth_changed
    AFTER UPDATE OF tenant_id, public_id, secret_hash, scopes, expires_at, revoked_at OR DELETE
    ON api_keys FOR EACH ROW EXECUTE FUNCTION agentplane_auth_changed();

CREATE TRIGGER tenants_auth_changed
    AFTER UPDATE OF tenant_id, status, plan_id, region OR DELETE
    ON tenants FOR EACH ROW EXECUTE FUNCTION agentplane_auth_changed();
