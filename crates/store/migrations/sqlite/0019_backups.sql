-- Backups are exports of kind 'backup' (full, sealed with the tenant key), kept by count
-- rather than by age, with the report of their last verification.
ALTER TABLE exports ADD COLUMN kind TEXT NOT NULL DEFAULT 'export';
ALTER TABLE exports ADD COLUMN verification TEXT;
