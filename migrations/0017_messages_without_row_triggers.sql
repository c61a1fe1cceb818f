-- A message row pays less per-row trigger work on insert. The ingest transaction is the only
-- writer of messages (the service never updates or deletes them), and it writes a message's
-- device itself, inserted or known from a committed transaction before the message: that
-- reference holds by construction, as the references of measurements do since 0008, and its
-- foreign-key look-up per row goes (checked by a test). The sender's references stay checked:
-- a destination or registration comes from outside the transaction (a cache, or a spool an
-- earlier run left, possibly for another database), and a delivery for one this database
-- does not have must be refused, not stored.
--
-- The per-device message counter is kept by the ingest statement itself, from the rows it
-- inserted, instead of by a PL/pgSQL statement trigger with a transition table; the update
-- and delete triggers stay for changes made by hand.
ALTER TABLE messages DROP CONSTRAINT messages_device_id_fkey;
DROP TRIGGER messages_counted_on_insert ON messages;
DROP FUNCTION count_device_messages_inserted();
