-- How far the change log has been pruned, so a reader that holds nothing (a change-feed
-- cursor in a sync job's hands) can tell whether rows it has not read are gone. The
-- watermark is the newest transaction any deleted log row belonged to; a statement-level
-- trigger keeps it whoever deletes (retention, or an operator by hand).

create table if not exists realtime.log_pruned (
    one  boolean primary key default true check (one),
    upto xid8 not null
);

revoke all on realtime.log_pruned from public;

create or replace function realtime.note_pruned() returns trigger
language plpgsql security definer set search_path = '' as $fn$
begin
    insert into realtime.log_pruned (upto)
    select pg_catalog.max(g.xid) from switchboard_gone g having pg_catalog.max(g.xid) is not null
    on conflict (one) do update
    set upto = greatest(realtime.log_pruned.upto, excluded.upto);
    return null;
end
$fn$;

drop trigger if exists switchboard_note_pruned on realtime.changes;
create trigger switchboard_note_pruned after delete on realtime.changes
    referencing old table as switchboard_gone
    for each statement execute function realtime.note_pruned();

-- Whether rows new to a cursor (`cursor_xmax`, in-progress `cursor_xip`) may have been
-- deleted: some deleted transaction is at or past its xmax, or one of its in-progress
-- transactions that has finished since is no newer than the watermark. (A transaction
-- still running cannot have lost rows.)
create or replace function realtime.log_lost_since(cursor_xmax xid8, cursor_xip xid8[])
returns boolean
language sql stable set search_path = '' as $fn$
    select coalesce((
        select p.upto >= cursor_xmax or exists (
            select 1 from pg_catalog.unnest(cursor_xip) as x
            where x <= p.upto
              and pg_catalog.pg_visible_in_snapshot(x, pg_catalog.pg_current_snapshot()))
        from realtime.log_pruned p), false)
$fn$;

revoke all on function realtime.note_pruned() from public;
revoke all on function realtime.log_lost_since(xid8, xid8[]) from public;
