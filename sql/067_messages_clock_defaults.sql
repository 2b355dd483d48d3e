-- A `realtime.messages` restored from Supabase keeps Supabase's timestamp defaults,
-- `now()`: the transaction's start. Messages sent in one transaction then shared one
-- `inserted_at`, and Broadcast Replay, which orders by it, returned them in any order
-- (and "the newest N" was any N of them). Such a table's timestamps now default as this
-- schema's own table's do (021): UTC clock time. Only a default that is still Supabase's
-- `now()` on a `timestamp` column is changed; partitions follow their parent.
do $do$
declare
    col text;
begin
    foreach col in array array['inserted_at', 'updated_at'] loop
        if exists (
            select 1
              from pg_catalog.pg_attrdef d
              join pg_catalog.pg_attribute a on a.attrelid = d.adrelid and a.attnum = d.adnum
             where d.adrelid = 'realtime.messages'::regclass
               and a.attname = col
               and a.atttypid = 'pg_catalog.timestamp'::regtype
               and pg_catalog.pg_get_expr(d.adbin, d.adrelid) in ('now()', 'pg_catalog.now()')
        ) then
            execute pg_catalog.format(
                'alter table realtime.messages alter column %I set default '
                'pg_catalog.timezone(''utc'', pg_catalog.clock_timestamp())', col);
        end if;
    end loop;
end
$do$;
