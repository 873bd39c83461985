-- The schema's version, the table locked until the migration commits: one migrator at a time,
-- even when two runs start together. Returns the last version applied (0: none).
CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
LOCK TABLE schema_version IN EXCLUSIVE MODE;
SELECT coalesce(max(version), 0) FROM schema_version
