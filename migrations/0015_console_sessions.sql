-- Console sign-ins: an API key exchanged for a session cookie. Only a SHA-256 of the cookie
-- is stored (as with API keys); the session lives no longer than its key: every lookup joins
-- a key that is not revoked, and a revoked or deleted key takes its sessions with it.
CREATE TABLE console_sessions (
    token_hash  BYTEA PRIMARY KEY CHECK (length(token_hash) = 32),
    api_key_id  UUID NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    -- Sent back by the page in X-CSRF-Token on every state-changing request.
    csrf        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX console_sessions_expires_idx ON console_sessions (expires_at);
CREATE INDEX console_sessions_key_idx ON console_sessions (api_key_id);
