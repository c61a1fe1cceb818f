-- Registrations are keyed by UUID (0006), so the event's registration is one too; the
-- normalised URN of a device door's first `bn` (`senml::device_key`), for filtering by
-- device in any spelling; and what the replay that stored it answered, so a second replay
-- answers the same.
ALTER TABLE door_events ALTER COLUMN device_key_id TYPE UUID USING NULL;
ALTER TABLE door_events ADD COLUMN device_key TEXT;
ALTER TABLE door_events ADD COLUMN replayed_status TEXT
    CHECK (replayed_status IN ('stored', 'quarantined', 'duplicate'));
CREATE INDEX door_events_device_idx ON door_events (device_key, received_at DESC)
    WHERE device_key IS NOT NULL;
