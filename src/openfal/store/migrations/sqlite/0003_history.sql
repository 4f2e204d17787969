-- The request history: pages of requests newest first, by endpoint, by key or all of them
-- (keyset pagination on (created_at, id)).
CREATE INDEX requests_history ON requests (created_at, id);
CREATE INDEX requests_history_endpoint ON requests (endpoint_id, created_at, id);
CREATE INDEX requests_history_key ON requests (key_id, created_at, id);
