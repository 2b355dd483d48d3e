-- A delivery's cursor write as a compare-and-set. The delivery loop checks the endpoint's
-- version before each POST, but a replay (the one operator change that moves the cursor)
-- could land between that check and the cursor write after the 2xx: the replay moved the
-- cursor back, and the write then moved it past the batch again, so the replay was lost
-- (`webhooks_delivery`'s replay test saw it under load). Now the write names the cursor
-- it expects to replace and changes nothing when the cursor is another one: 'stored',
-- 'moved' (the loop reloads and goes on from the replay's cursor) or 'lost' (this hub no
-- longer holds the lease). Pause, resume, retry and alter leave the cursor alone, so a
-- batch delivered across them is recorded as before.

create or replace function realtime.webhook_delivered(
    name text, owner text, pos text, events int, expected text)
returns text
language plpgsql volatile set search_path = '' as $fn$
begin
    update realtime.webhook_endpoints e
    set position = webhook_delivered.pos,
        last_success_at = case when webhook_delivered.events > 0 then pg_catalog.now() else e.last_success_at end,
        last_attempt_at = case when webhook_delivered.events > 0 then pg_catalog.now() else e.last_attempt_at end,
        failures = case when webhook_delivered.events > 0 then 0 else e.failures end,
        attempts = e.attempts + (webhook_delivered.events > 0)::int,
        delivered = e.delivered + webhook_delivered.events
    where e.name = webhook_delivered.name and e.lease_owner = webhook_delivered.owner
      and e.position = webhook_delivered.expected;
    if found then
        perform realtime.hold_webhook_position(webhook_delivered.name, webhook_delivered.pos);
        return 'stored';
    end if;
    if exists (select 1 from realtime.webhook_endpoints e
               where e.name = webhook_delivered.name and e.lease_owner = webhook_delivered.owner) then
        return 'moved';
    end if;
    return 'lost';
end
$fn$;
revoke all on function realtime.webhook_delivered(text, text, text, int, text) from public;

-- grant_hub (040) grants the new function too.
alter function realtime.grant_hub(text) rename to grant_hub_040;
create function realtime.grant_hub(hub text) returns void
language plpgsql volatile set search_path = '' as $fn$
begin
    perform realtime.grant_hub_040(hub);
    execute pg_catalog.format(
        'grant execute on function realtime.webhook_delivered(text, text, text, int, text) to %I',
        hub);
end
$fn$;
revoke all on function realtime.grant_hub(text) from public;
