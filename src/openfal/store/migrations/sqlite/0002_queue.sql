-- The store becomes the queue: claims with leases fenced by the attempt id, cancel
-- requests, live progress for any reader, delivery leases for webhooks, shared secrets.
ALTER TABLE requests ADD COLUMN attempt_id TEXT;
ALTER TABLE requests ADD COLUMN lease_owner TEXT;
ALTER TABLE requests ADD COLUMN lease_expires_at REAL;
ALTER TABLE requests ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN key_limit INTEGER;
ALTER TABLE requests ADD COLUMN start_deadline REAL;
ALTER TABLE requests ADD COLUMN progress TEXT;
ALTER TABLE requests ADD COLUMN latest_partial BLOB;
UPDATE requests SET key_limit = json_extract(options, '$.key_limit'),
    start_deadline = json_extract(options, '$.start_deadline')
    WHERE status != 'COMPLETED';
-- Requests the old server was running when it stopped: their runners are gone, so their
-- leases have lapsed already and they are retried (or failed) at the next start.
UPDATE requests SET lease_owner = 'local:upgraded', lease_expires_at = 0,
    attempt_id = (SELECT attempt_id FROM attempts
                  WHERE attempts.request_id = requests.id ORDER BY attempt DESC LIMIT 1)
    WHERE status = 'IN_PROGRESS';
DROP INDEX IF EXISTS requests_unfinished;
CREATE INDEX requests_waiting ON requests (endpoint_id, priority, created_at)
    WHERE status = 'IN_QUEUE';
CREATE INDEX requests_waiting_app ON requests (app_id, priority, created_at)
    WHERE status = 'IN_QUEUE';
CREATE INDEX requests_leases ON requests (lease_expires_at) WHERE status = 'IN_PROGRESS';
CREATE INDEX requests_running_key ON requests (key_id) WHERE status = 'IN_PROGRESS';
CREATE INDEX requests_deadline ON requests (start_deadline)
    WHERE status = 'IN_QUEUE' AND start_deadline IS NOT NULL;
CREATE INDEX requests_attempt ON requests (attempt_id);
ALTER TABLE webhooks ADD COLUMN lease_expires_at REAL;
UPDATE webhooks SET lease_expires_at = 0 WHERE state = 'delivering';
CREATE INDEX webhooks_leases ON webhooks (lease_expires_at) WHERE state = 'delivering';
CREATE TABLE secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
