-- What the doors answered without storing a new message: refused requests (400, 401, 404,
-- 413), retries of a stored delivery (duplicate) and deliveries kept in the local spool
-- (stored later by its replay). Written at a capped rate and pruned to a total size, so a
-- flood of junk costs a bounded amount; the console reads them after a restart and from
-- every replica.
CREATE TABLE door_events (
    -- Made at the door (UUID v7, so ordered by time): the in-memory ring of the process
    -- and this table know an event by the same id.
    id                   UUID PRIMARY KEY,
    received_at          TIMESTAMPTZ NOT NULL,
    door                 TEXT NOT NULL CHECK (door IN ('destination', 'm2m', 'ip')),
    verdict              TEXT NOT NULL CHECK (verdict IN ('rejected', 'duplicate', 'spooled')),
    -- The HTTP status we answered, and the error code of a refusal (`AppError::code`:
    -- missing_header, malformed_header, not_verified, unknown_device, bad_pack,
    -- payload_too_large, ...) or the verdict itself.
    status               SMALLINT NOT NULL,
    reason               TEXT NOT NULL,
    -- The one-line reason the sender was given.
    detail               TEXT,
    -- As sent, when it parsed: the destination door's plug, a device door's first `bn`.
    plug                 UUID,
    device_urn           TEXT,
    -- Known only once verified (duplicate, spooled).
    destination_id       UUID,
    device_key_id        BIGINT,
    -- The stored message a duplicate repeats.
    message_id           BIGINT,
    -- Every request header but Authorization and Cookie, names lower case, values as text.
    headers              JSONB NOT NULL DEFAULT '{}'::jsonb,
    -- The first 64 KiB of the body; NULL when it was not read (refused from the head).
    body                 BYTEA,
    -- Bytes received, or declared by Content-Length when the body was not read.
    body_size            BIGINT,
    body_truncated       BOOLEAN NOT NULL DEFAULT false,
    -- Set by an admin's replay that stored it.
    replayed_message_id  BIGINT,
    replayed_at          TIMESTAMPTZ,
    -- What the row costs, counted against the total size cap (oldest dropped first).
    stored_bytes         INTEGER NOT NULL
);
CREATE INDEX door_events_received_idx ON door_events (received_at DESC, id DESC);
CREATE INDEX door_events_message_idx ON door_events (message_id) WHERE message_id IS NOT NULL;
CREATE INDEX door_events_replayed_idx ON door_events (replayed_message_id)
    WHERE replayed_message_id IS NOT NULL;

-- The console's live list hears of new events from every process: the ids of a statement's
-- rows (written at most about 20 a second, so the payload stays small).
CREATE FUNCTION notify_door_events_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('things_door_events_inserted',
                      (SELECT string_agg(id::text, ',') FROM new_events));
    RETURN NULL;
END $$;
CREATE TRIGGER door_events_inserted AFTER INSERT ON door_events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION notify_door_events_inserted();
