-- Capture by logical decoding (src/capture/decoding; not yet wired into the hub): the end
-- of the last transaction a reader of slot `slot_name` wrote into realtime.changes,
-- recorded in the same statement as those log rows. After a crash the slot is read again
-- from its confirmed position, which may be older; transactions that end at or before
-- this one are skipped, so none is logged twice.

create table if not exists realtime.decoded_position (
    slot_name  text primary key,
    end_lsn    pg_lsn not null,
    written_at timestamptz not null default now()
);

revoke all on realtime.decoded_position from public;
