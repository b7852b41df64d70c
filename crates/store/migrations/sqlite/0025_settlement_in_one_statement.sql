-- A settlement batch in one statement (crates/store/src/sqlite.rs, settle_alone), as
-- PostgreSQL's agentplane_settle_alone (postgres/0024): every statement of the connection is a
-- trip to its thread and back, and a batch written as a transaction took six of them. One row
-- inserted into this view writes the whole batch in one, its commit included:
--   records:    the usage records, [{tenant_id, id, ts, agent_id, model, provider, tokens_in,
--               tokens_out, latency_ms, status, trace_id}]
--   takes:      what each lease's runs consumed, [{tenant_id, period, id, messages, tokens}]
--               (one element per lease)
--   counters:   every counter of the batch with what its runs consumed and the plan's limits,
--               [{tenant_id, period, used_messages, used_tokens, limit_messages, limit_tokens}]
--   thresholds: the percentages that notify (crates/core/src/webhook.rs, THRESHOLDS)
-- A lease gives what its runs consumed as far as it still holds it (what it no longer holds is
-- counted as used all the same). Nothing is written, and the statement fails, when a counter
-- a run consumed from is missing (AP500), or when a counter would cross a threshold (AP100):
-- the caller then settles the batch in a transaction that also enqueues the notification.
CREATE VIEW settlement_batches (records, takes, counters, thresholds) AS
    SELECT NULL, NULL, NULL, NULL WHERE 0;

CREATE TRIGGER settlement_batches_insert INSTEAD OF INSERT ON settlement_batches
BEGIN
    SELECT RAISE(ABORT, 'AP500') WHERE EXISTS (
        SELECT 1 FROM json_each(NEW.counters) AS v
        WHERE (v.value ->> '$.used_messages' <> 0 OR v.value ->> '$.used_tokens' <> 0)
          AND NOT EXISTS (SELECT 1 FROM usage_counters c
              WHERE c.tenant_id = v.value ->> '$.tenant_id' AND c.period = v.value ->> '$.period'));

    -- The same condition as `crossed` in crates/core/src/webhook.rs: change both.
    SELECT RAISE(ABORT, 'AP100') WHERE EXISTS (
        SELECT 1 FROM json_each(NEW.counters) AS v
        JOIN usage_counters c
            ON c.tenant_id = v.value ->> '$.tenant_id' AND c.period = v.value ->> '$.period'
        JOIN json_each(NEW.thresholds) AS t
        WHERE (v.value ->> '$.limit_messages' > 0
               AND c.messages_used * 100 < t.value * (v.value ->> '$.limit_messages')
               AND (c.messages_used + (v.value ->> '$.used_messages')) * 100
                   >= t.value * (v.value ->> '$.limit_messages'))
           OR (v.value ->> '$.limit_tokens' > 0
               AND c.tokens_used * 100 < t.value * (v.value ->> '$.limit_tokens')
               AND (c.tokens_used + (v.value ->> '$.used_tokens')) * 100
                   >= t.value * (v.value ->> '$.limit_tokens')));

    INSERT INTO usage_records (tenant_id, id, ts, agent_id, model, provider, tokens_in,
        tokens_out, latency_ms, status, trace_id)
    SELECT value ->> '$.tenant_id', value ->> '$.id', value ->> '$.ts', value ->> '$.agent_id',
        value ->> '$.model', value ->> '$.provider', value ->> '$.tokens_in',
        value ->> '$.tokens_out', value ->> '$.latency_ms', value ->> '$.status',
        value ->> '$.trace_id'
    FROM json_each(NEW.records) WHERE true;

    -- Counters before leases: what a lease gives is read from it before it changes.
    UPDATE usage_counters
    SET messages_used = messages_used + (v.value ->> '$.used_messages'),
        tokens_used = tokens_used + (v.value ->> '$.used_tokens'),
        messages_reserved = messages_reserved - coalesce(g.messages, 0),
        tokens_reserved = tokens_reserved - coalesce(g.tokens, 0)
    FROM json_each(NEW.counters) AS v
    LEFT JOIN (
        SELECT q.tenant_id, q.period,
               sum(min(q.messages, t.value ->> '$.messages')) AS messages,
               sum(min(q.tokens, t.value ->> '$.tokens')) AS tokens
        FROM json_each(NEW.takes) AS t
        JOIN quota_leases q ON q.tenant_id = t.value ->> '$.tenant_id'
            AND q.period = t.value ->> '$.period' AND q.id = t.value ->> '$.id'
        GROUP BY q.tenant_id, q.period
    ) AS g ON g.tenant_id = v.value ->> '$.tenant_id' AND g.period = v.value ->> '$.period'
    WHERE usage_counters.tenant_id = v.value ->> '$.tenant_id'
      AND usage_counters.period = v.value ->> '$.period'
      AND (v.value ->> '$.used_messages' <> 0 OR v.value ->> '$.used_tokens' <> 0);

    UPDATE quota_leases
    SET messages = messages - min(messages, t.value ->> '$.messages'),
        tokens = tokens - min(tokens, t.value ->> '$.tokens')
    FROM json_each(NEW.takes) AS t
    WHERE quota_leases.tenant_id = t.value ->> '$.tenant_id'
      AND quota_leases.period = t.value ->> '$.period'
      AND quota_leases.id = t.value ->> '$.id';
END;
