-- INSERT OR REPLACE / REPLACE INTO would delete an existing audit event without firing the
-- DELETE trigger (SQLite fires delete triggers for REPLACE only with recursive_triggers on).
-- Refuse any insert that would land on an existing (tenant_id, seq).
CREATE TRIGGER audit_events_no_replace BEFORE INSERT ON audit_events
WHEN EXISTS (SELECT 1 FROM audit_events WHERE tenant_id = NEW.tenant_id AND seq = NEW.seq)
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
