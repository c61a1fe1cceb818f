-- What the dashboard API needs to stay fast on large tables.

-- Messages per device, kept as a counter. Counting at read time would scan every message of
-- every listed device (an index-only scan of messages(device_id) still visits one index entry
-- per message: millions for a busy device, and once per device on a listing page), while the
-- counter costs the ingest transaction one update of a devices row it has already locked
-- (the upsert of last_seen), so it adds no new lock and no new lock order.
ALTER TABLE devices ADD COLUMN message_count BIGINT NOT NULL DEFAULT 0;

CREATE INDEX messages_device_idx ON messages (device_id) WHERE device_id IS NOT NULL;

UPDATE devices d SET message_count = c.n
FROM (SELECT device_id, count(*) AS n FROM messages WHERE device_id IS NOT NULL GROUP BY device_id) c
WHERE d.id = c.device_id;

-- Statement-level triggers with transition tables: one aggregate update per statement, also
-- when many messages are written by one statement. (PostgreSQL allows transition tables only
-- on single-event triggers, hence three.)
CREATE FUNCTION count_device_messages_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE devices d SET message_count = d.message_count + c.n
    FROM (SELECT device_id, count(*) AS n FROM new_messages
          WHERE device_id IS NOT NULL GROUP BY device_id) c
    WHERE d.id = c.device_id;
    RETURN NULL;
END $$;

CREATE FUNCTION count_device_messages_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE devices d SET message_count = d.message_count + c.delta
    FROM (
        SELECT device_id, sum(delta) AS delta FROM (
            SELECT n.device_id, 1 AS delta FROM new_messages n JOIN old_messages o USING (id)
            WHERE n.device_id IS DISTINCT FROM o.device_id AND n.device_id IS NOT NULL
            UNION ALL
            SELECT o.device_id, -1 FROM new_messages n JOIN old_messages o USING (id)
            WHERE n.device_id IS DISTINCT FROM o.device_id AND o.device_id IS NOT NULL
        ) changes GROUP BY device_id
    ) c
    WHERE d.id = c.device_id AND c.delta <> 0;
    RETURN NULL;
END $$;

CREATE FUNCTION count_device_messages_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE devices d SET message_count = d.message_count - c.n
    FROM (SELECT device_id, count(*) AS n FROM old_messages
          WHERE device_id IS NOT NULL GROUP BY device_id) c
    WHERE d.id = c.device_id;
    RETURN NULL;
END $$;

CREATE TRIGGER messages_counted_on_insert AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_messages
    FOR EACH STATEMENT EXECUTE FUNCTION count_device_messages_inserted();
CREATE TRIGGER messages_counted_on_update AFTER UPDATE ON messages
    REFERENCING OLD TABLE AS old_messages NEW TABLE AS new_messages
    FOR EACH STATEMENT EXECUTE FUNCTION count_device_messages_updated();
CREATE TRIGGER messages_counted_on_delete AFTER DELETE ON messages
    REFERENCING OLD TABLE AS old_messages
    FOR EACH STATEMENT EXECUTE FUNCTION count_device_messages_deleted();

-- Live stream: one small notification per INSERT statement on measurements, delivered at
-- commit to every listening server process (any replica), which then reads the new rows once
-- and fans them out to its subscribers. Payload: "min_id,max_id" of the statement's rows and,
-- while it fits, the ids of the messages they belong to ("min,max,msg1,msg2,..."), so that a
-- reader can tell these rows from other transactions' rows within the same id range.
-- NOTIFY payloads must stay under 8000 bytes: past 7000 the message list is left out.
CREATE FUNCTION notify_measurements_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    payload TEXT;
BEGIN
    SELECT min(id)::text || ',' || max(id)::text
           || coalesce(',' || string_agg(DISTINCT message_id::text, ','), '')
      INTO payload FROM new_measurements;
    IF payload IS NULL THEN
        RETURN NULL;
    END IF;
    IF length(payload) > 7000 THEN
        payload := split_part(payload, ',', 1) || ',' || split_part(payload, ',', 2);
    END IF;
    PERFORM pg_notify('things_measurements_inserted', payload);
    RETURN NULL;
END $$;

CREATE TRIGGER measurements_inserted AFTER INSERT ON measurements
    REFERENCING NEW TABLE AS new_measurements
    FOR EACH STATEMENT EXECUTE FUNCTION notify_measurements_inserted();

-- Device listing pages in id order with an optional kind filter.
CREATE INDEX devices_kind_idx ON devices (kind, id);
