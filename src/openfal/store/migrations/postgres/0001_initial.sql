-- The shared store: the tables of the SQLite store after its 0002, in PostgreSQL types.
-- Times are Unix seconds (double precision), as everywhere in openfal. The JSON columns
-- (headers, options, result_headers, progress) are text: written and read back byte for
-- byte as the SQLite store does, and never queried inside (what a query needs, key_limit and
-- start_deadline, has its own column). No foreign keys: logs may name a request whose row is
-- written later, and purges delete children explicitly, in batches.
CREATE TABLE requests (
    id text PRIMARY KEY,
    seq bigserial,  -- arrival order among requests created in the same instant
    app_id text NOT NULL,
    endpoint_id text NOT NULL,
    path text NOT NULL,
    mode text NOT NULL CHECK (mode IN ('queue', 'direct')),
    status text NOT NULL CHECK (status IN ('IN_QUEUE', 'IN_PROGRESS', 'COMPLETED')),
    priority integer NOT NULL DEFAULT 0,
    payload bytea NOT NULL,
    headers text NOT NULL DEFAULT '{}',
    options text NOT NULL DEFAULT '{}',
    attempts integer NOT NULL DEFAULT 0,
    created_at double precision NOT NULL,
    started_at double precision,
    finished_at double precision,
    result_status integer,
    result_body bytea,
    result_headers text,
    error text,
    error_type text,
    inference_time double precision,
    key_id text,
    billable_units double precision,
    attempt_id text,
    lease_owner text,
    lease_expires_at double precision,
    cancel_requested boolean NOT NULL DEFAULT false,
    key_limit integer,
    start_deadline double precision,
    progress text,
    latest_partial bytea
);
-- The queue: what a claim reads (per endpoint), what a queue position counts (per app).
CREATE INDEX requests_waiting ON requests (endpoint_id, priority, created_at, seq)
    WHERE status = 'IN_QUEUE';
CREATE INDEX requests_waiting_app ON requests (app_id, priority, created_at, seq)
    WHERE status = 'IN_QUEUE';
CREATE INDEX requests_deadline ON requests (start_deadline)
    WHERE status = 'IN_QUEUE' AND start_deadline IS NOT NULL;
-- Running requests: lapsed leases, the count per key a claim checks, lease renewals.
CREATE INDEX requests_leases ON requests (lease_expires_at) WHERE status = 'IN_PROGRESS';
CREATE INDEX requests_running_key ON requests (key_id) WHERE status = 'IN_PROGRESS';
CREATE INDEX requests_attempt ON requests (attempt_id) WHERE status = 'IN_PROGRESS';
-- Finished requests: usage over a time range, the retention purge.
CREATE INDEX requests_finished_at ON requests (finished_at) WHERE status = 'COMPLETED';

CREATE TABLE attempts (
    request_id text NOT NULL,
    attempt integer NOT NULL,
    attempt_id text NOT NULL,
    runner_id text NOT NULL,
    started_at double precision NOT NULL,
    finished_at double precision,
    outcome text,
    error_type text,
    PRIMARY KEY (request_id, attempt)
);
CREATE INDEX attempts_id ON attempts (attempt_id);

CREATE TABLE api_keys (
    id text PRIMARY KEY,
    secret_hash text NOT NULL,
    scope text NOT NULL,
    name text NOT NULL DEFAULT '',
    created_at double precision NOT NULL,
    revoked_at double precision,
    max_concurrency integer
);

CREATE TABLE logs (
    seq bigserial PRIMARY KEY,  -- the order lines were written in (SQLite's rowid)
    request_id text NOT NULL,
    timestamp double precision NOT NULL,
    level text NOT NULL,
    source text NOT NULL,
    message text NOT NULL
);
CREATE INDEX logs_request ON logs (request_id, seq);

CREATE TABLE webhooks (
    request_id text PRIMARY KEY,
    url text NOT NULL,
    user_id text NOT NULL,
    gateway_request_id text NOT NULL,
    state text NOT NULL CHECK (state IN ('pending', 'delivering', 'delivered', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    tries integer NOT NULL DEFAULT 0,
    created_at double precision NOT NULL,
    next_attempt_at double precision,
    delivered_at double precision,
    lease_expires_at double precision
);
CREATE INDEX webhooks_due ON webhooks (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhooks_leases ON webhooks (lease_expires_at) WHERE state = 'delivering';

CREATE TABLE webhook_attempts (
    request_id text NOT NULL,
    attempt integer NOT NULL,
    started_at double precision NOT NULL,
    finished_at double precision,
    status_code integer,
    error text,
    duration double precision,
    PRIMARY KEY (request_id, attempt)
);

CREATE TABLE secrets (
    name text PRIMARY KEY,
    value bytea NOT NULL
);

-- Events too large for a NOTIFY payload (8000 bytes): the notification carries the id.
-- Readers fetch them within moments; rows older than a minute are deleted.
CREATE TABLE events (
    id bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    payload bytea NOT NULL
);
CREATE INDEX events_created_at ON events (created_at);
