-- The schema of the first release (a data dir made by it upgrades from here).
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    path TEXT NOT NULL,
    mode TEXT NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    payload BLOB NOT NULL,
    headers TEXT NOT NULL DEFAULT '{}',
    options TEXT NOT NULL DEFAULT '{}',
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    result_status INTEGER,
    result_body BLOB,
    result_headers TEXT,
    error TEXT,
    error_type TEXT,
    inference_time REAL,
    key_id TEXT,
    billable_units REAL
);
CREATE INDEX IF NOT EXISTS requests_unfinished ON requests (created_at)
    WHERE status != 'COMPLETED';
CREATE INDEX IF NOT EXISTS requests_finished_at ON requests (finished_at);
CREATE TABLE IF NOT EXISTS attempts (
    request_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    attempt_id TEXT NOT NULL,
    runner_id TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    outcome TEXT,
    error_type TEXT,
    PRIMARY KEY (request_id, attempt)
);
CREATE INDEX IF NOT EXISTS attempts_id ON attempts (attempt_id);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    scope TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    revoked_at REAL,
    max_concurrency INTEGER
);
CREATE TABLE IF NOT EXISTS logs (
    request_id TEXT NOT NULL,
    timestamp REAL NOT NULL,
    level TEXT NOT NULL,
    source TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_request ON logs (request_id);
CREATE TABLE IF NOT EXISTS webhooks (
    request_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    user_id TEXT NOT NULL,
    gateway_request_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    tries INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS webhooks_due ON webhooks (next_attempt_at) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS webhook_attempts (
    request_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    status_code INTEGER,
    error TEXT,
    duration REAL,
    PRIMARY KEY (request_id, attempt)
);
