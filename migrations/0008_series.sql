-- Measurements keyed by series, as time-series stores keep them.
--
-- Before: every measurement row carried its device id and its name as text, paid four B-tree
-- inserts ((device, name, time, id), (device, time, id), (time, id), (message_id)) and two
-- foreign-key trigger look-ups, about 332 bytes per measurement with its indexes. After: a
-- `series` row per (device, name, unit), written once; a measurement row holds the series id
-- and its value, with one B-tree on (series_id, time) and a BRIN index on (time, id) (rows
-- arrive in time order, so a few bytes per thousand rows find any time range or id range).
-- No foreign keys on measurements: the ingest transaction writes the message, the series and
-- the measurements together, so the references hold by construction (checked by a test).
-- The message id is no longer stored per row (nothing in the API reads it): the live-stream
-- notification, which listed the messages of an INSERT, is now sent by the ingest
-- transaction itself with the same payload, so the statement trigger goes too.
--
-- Existing data is converted in place: same ids, same partitions (names and bounds), same
-- values, so every answer of the API stays as it was.

CREATE TABLE series (
    id         INTEGER GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id  BIGINT NOT NULL REFERENCES devices (id),
    name       TEXT NOT NULL,
    -- Part of the key: a record's unit is kept as it came, so one name with two units is two
    -- series (read back together by name).
    unit       TEXT,
    CONSTRAINT series_key UNIQUE NULLS NOT DISTINCT (device_id, name, unit)
);

ALTER TABLE measurements RENAME TO measurements_v1;
DROP TRIGGER measurements_inserted ON measurements_v1;
DROP FUNCTION notify_measurements_inserted();
DO $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'measurements_v1'::regclass LOOP
        EXECUTE format('ALTER TABLE %I RENAME TO %I', p.relname, p.relname || '_v1');
    END LOOP;
END $$;

-- Column order keeps the fixed-width, always-present columns first (no alignment padding).
CREATE TABLE measurements (
    time            TIMESTAMPTZ NOT NULL,
    id              BIGINT GENERATED ALWAYS AS IDENTITY,
    series_id       INTEGER NOT NULL,
    value           DOUBLE PRECISION,
    sum             DOUBLE PRECISION,
    string_value    TEXT,
    string_escaped  BOOLEAN,
    bool_value      BOOLEAN,
    data_value      BYTEA
) PARTITION BY RANGE (time);

-- The same partitions as before (monthly ones and DEFAULT), under the same names.
DO $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'measurements_v1'::regclass LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF measurements %s',
                       left(p.relname, -3), p.bound);
    END LOOP;
END $$;

INSERT INTO series (device_id, name, unit)
SELECT DISTINCT device_id, name, unit FROM measurements_v1 ORDER BY 1, 2, 3;

INSERT INTO measurements (time, id, series_id, value, sum, string_value, string_escaped,
                          bool_value, data_value)
OVERRIDING SYSTEM VALUE
SELECT m.time, m.id, s.id, m.value, m.sum, m.string_value, m.string_escaped,
       m.bool_value, m.data_value
FROM measurements_v1 m
JOIN series s ON s.device_id = m.device_id AND s.name = m.name
             AND s.unit IS NOT DISTINCT FROM m.unit
ORDER BY m.time, m.id;

SELECT setval(pg_get_serial_sequence('measurements', 'id'),
              COALESCE((SELECT max(id) FROM measurements), 0) + 1, false);

DROP TABLE measurements_v1;

CREATE INDEX measurements_series_time_idx ON measurements (series_id, time);
CREATE INDEX measurements_time_id_brin ON measurements USING brin (time, id)
    WITH (pages_per_range = 16, autosummarize = on);

-- Latest values: written in the same transaction as the measurement they copy, so their
-- references hold by construction too; the per-row trigger look-ups go. Half-full pages
-- leave room for the update of a row to stay on its page (a HOT update, without an index
-- insert), which is what ingestion does to this table all day.
ALTER TABLE latest_values DROP CONSTRAINT latest_values_device_id_fkey,
                          DROP CONSTRAINT latest_values_message_id_fkey;
ALTER TABLE latest_values SET (fillfactor = 50);
CLUSTER latest_values USING latest_values_pkey;
-- The same for devices, whose message count every batch updates.
ALTER TABLE devices SET (fillfactor = 50);
CLUSTER devices USING devices_pkey;
