-- The gateway's hot path, in fewer round trips.

-- 1. Every server process caches what a run calls (the agent, its provider and the opened
-- secret) as it caches API-key lookups: changes are announced on agentplane_auth (0020), with
-- the tenant's id; a shared provider's change concerns every tenant ('*' empties the caches).
CREATE TRIGGER agents_config_changed
    AFTER UPDATE OR DELETE ON agents
    FOR EACH ROW EXECUTE FUNCTION agentplane_auth_changed();

CREATE TRIGGER provider_credentials_config_changed
    AFTER UPDATE OR DELETE ON provider_credentials
    FOR EACH ROW EXECUTE FUNCTION agentplane_auth_changed();

CREATE FUNCTION agentplane_shared_config_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('agentplane_auth', '*');
    RETURN NULL;
END
$$;

CREATE TRIGGER shared_providers_config_changed
    AFTER UPDATE OR DELETE ON shared_providers
    FOR EACH STATEMENT EXECUTE FUNCTION agentplane_shared_config_changed();

-- 2. A settlement batch in one statement (crates/store/src/postgres.rs, settle_batch). It runs
-- as the caller, under the caller's row-level security.
--   $1 usage records: [{tenant_id, id, ts, agent_id, model, provider, tokens_in, tokens_out,
--      latency_ms, status, trace_id}]
--   $2 what each lease's runs consumed: [{tenant_id, period, id, messages, tokens}]
--   $3 every counter of the batch with what its runs consumed:
--      [{tenant_id, period, used_messages, used_tokens}]
-- Counters, then leases, are locked in key order, as grants and renewals lock them. A lease
-- gives what its runs consumed as far as it still holds it (what it no longer holds, because
-- the provider reported more than was reserved or the lease expired and went back, is counted
-- as used all the same). Answers each changed counter's totals after.
CREATE FUNCTION agentplane_settle(jsonb, jsonb, jsonb)
RETURNS TABLE (tenant_id text, period text, messages_used bigint, tokens_used bigint)
-- PL/pgSQL, not SQL: its statements' plans are kept per connection, not made on every call.
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    PERFORM 1 FROM usage_counters c
        JOIN jsonb_to_recordset($3) AS v(tenant_id text, period text)
        ON c.tenant_id = v.tenant_id AND c.period = v.period
        ORDER BY c.tenant_id, c.period FOR UPDATE OF c;

    PERFORM 1 FROM quota_leases q
        JOIN jsonb_to_recordset($2) AS v(tenant_id text, period text, id text)
        ON q.tenant_id = v.tenant_id AND q.period = v.period AND q.id = v.id
        ORDER BY q.tenant_id, q.period, q.id FOR UPDATE OF q;

    RETURN QUERY
    WITH takes AS (
        SELECT q.tenant_id, q.period, q.id,
               LEAST(v.messages, q.messages) AS messages, LEAST(v.tokens, q.tokens) AS tokens
        FROM quota_leases q
        JOIN jsonb_to_recordset($2) AS v(tenant_id text, period text, id text, messages bigint,
            tokens bigint)
        ON q.tenant_id = v.tenant_id AND q.period = v.period AND q.id = v.id
    ), taken AS (
        SELECT t.tenant_id, t.period, sum(t.messages)::bigint AS messages,
               sum(t.tokens)::bigint AS tokens
        FROM takes t GROUP BY t.tenant_id, t.period
    ), records AS (
        INSERT INTO usage_records (tenant_id, id, ts, agent_id, model, provider, tokens_in,
            tokens_out, latency_ms, status, trace_id)
        SELECT r.tenant_id, r.id, r.ts, r.agent_id, r.model, r.provider, r.tokens_in,
            r.tokens_out, r.latency_ms, r.status, r.trace_id
        FROM jsonb_to_recordset($1) AS r(tenant_id text, id text, ts bigint, agent_id text,
            model text, provider text, tokens_in bigint, tokens_out bigint, latency_ms bigint,
            status text, trace_id text)
    ), leases AS (
        UPDATE quota_leases q SET messages = q.messages - t.messages, tokens = q.tokens - t.tokens
        FROM takes t
        WHERE q.tenant_id = t.tenant_id AND q.period = t.period AND q.id = t.id
          AND (t.messages <> 0 OR t.tokens <> 0)
    ), counters AS (
        UPDATE usage_counters c
        SET messages_used = c.messages_used + v.used_messages,
            tokens_used = c.tokens_used + v.used_tokens,
            messages_reserved = c.messages_reserved - COALESCE(t.messages, 0),
            tokens_reserved = c.tokens_reserved - COALESCE(t.tokens, 0)
        FROM jsonb_to_recordset($3) AS v(tenant_id text, period text, used_messages bigint,
            used_tokens bigint)
        LEFT JOIN taken t ON t.tenant_id = v.tenant_id AND t.period = v.period
        WHERE c.tenant_id = v.tenant_id AND c.period = v.period
          AND (v.used_messages <> 0 OR v.used_tokens <> 0)
        RETURNING c.tenant_id, c.period, c.messages_used, c.tokens_used
    )
    SELECT u.tenant_id, u.period, u.messages_used, u.tokens_used FROM counters u;
END
$$;

GRANT EXECUTE ON FUNCTION agentplane_settle(jsonb, jsonb, jsonb) TO agentplane_app;

-- 3. The same batch as one statement outside any transaction block (one round trip, the
-- commit included), for the batches that release no lease: it enters the platform scope
-- itself (local to the statement's transaction), and when a counter crosses one of the
-- thresholds `$4` (percent of the limits `limit_messages`, `limit_tokens` in `$3`) it raises
-- AP100 instead, undoing everything: the caller then settles the batch in a transaction that
-- also enqueues the notification. A counter missing (a grant creates every counter a lease
-- is taken from) raises AP500 and undoes everything too.
CREATE FUNCTION agentplane_settle_alone(jsonb, jsonb, jsonb, bigint[])
RETURNS TABLE (tenant_id text, period text, messages_used bigint, tokens_used bigint)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    r record;
    changed bigint := 0;
BEGIN
    PERFORM set_config('app.platform', 'on', true);
    FOR r IN
        SELECT s.tenant_id, s.period, s.messages_used, s.tokens_used,
               v.used_messages, v.used_tokens, v.limit_messages, v.limit_tokens
        FROM agentplane_settle($1, $2, $3) AS s
        JOIN jsonb_to_recordset($3) AS v(tenant_id text, period text, used_messages bigint,
            used_tokens bigint, limit_messages bigint, limit_tokens bigint)
        ON v.tenant_id = s.tenant_id AND v.period = s.period
    LOOP
        IF EXISTS (
            SELECT 1 FROM unnest($4) AS t(pct)
            WHERE (r.limit_messages > 0
                   AND (r.messages_used - r.used_messages)::numeric * 100 < t.pct::numeric * r.limit_messages
                   AND r.messages_used::numeric * 100 >= t.pct::numeric * r.limit_messages)
               OR (r.limit_tokens > 0
                   AND (r.tokens_used - r.used_tokens)::numeric * 100 < t.pct::numeric * r.limit_tokens
                   AND r.tokens_used::numeric * 100 >= t.pct::numeric * r.limit_tokens)
        ) THEN
            RAISE EXCEPTION 'a usage threshold was crossed' USING ERRCODE = 'AP100';
        END IF;
        tenant_id := r.tenant_id;
        period := r.period;
        messages_used := r.messages_used;
        tokens_used := r.tokens_used;
        changed := changed + 1;
        RETURN NEXT;
    END LOOP;
    IF changed <> (SELECT count(*) FROM jsonb_to_recordset($3)
                   AS v(used_messages bigint, used_tokens bigint)
                   WHERE v.used_messages <> 0 OR v.used_tokens <> 0) THEN
        RAISE EXCEPTION 'a settled run''s usage counter is missing' USING ERRCODE = 'AP500';
    END IF;
END
$$;

GRANT EXECUTE ON FUNCTION agentplane_settle_alone(jsonb, jsonb, jsonb, bigint[]) TO agentplane_app;
