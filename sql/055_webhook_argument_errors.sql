-- create_webhook and alter_webhook check their arguments before writing the row. They
-- relied on webhook_endpoints' CHECK constraints, whose violation prints the whole row,
-- signing secret included, to the caller and to the server log ("Failing row contains
-- (bad name, http://x/y, ..., whsec_...)"). Now a bad name, url, tables or events gets a
-- message naming the argument and its rule; the constraints stay as the last word.
-- Same signatures, so the grants on both functions are kept.

-- Raises a clear error for a field of an endpoint that breaks its rule. A null one is
-- not checked (alter_webhook leaves it as it is; create_webhook passes '' or '{}').
-- `events` upper-cased, as stored.
create or replace function realtime.check_webhook_fields(
    name text, url text, tables regclass[], events text[]
) returns void
language plpgsql immutable set search_path = '' as $fn$
begin
    if check_webhook_fields.name !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' then
        raise exception 'webhook name must be 1 to 63 letters, digits, "_", "." or "-", starting with a letter or digit (got %)',
            pg_catalog.quote_literal(check_webhook_fields.name)
            using errcode = 'invalid_parameter_value';
    end if;
    if check_webhook_fields.url !~* '^https?://[^[:space:]]+$' then
        raise exception 'webhook url must start with http:// or https:// and contain no spaces'
            using errcode = 'invalid_parameter_value';
    end if;
    if pg_catalog.cardinality(check_webhook_fields.tables) = 0 then
        raise exception 'webhook tables must name at least one table'
            using errcode = 'invalid_parameter_value';
    end if;
    if pg_catalog.cardinality(check_webhook_fields.events) = 0
       -- (a null element is contained in nothing)
       or not (check_webhook_fields.events <@ '{INSERT,UPDATE,DELETE}'::text[]) then
        raise exception 'webhook events must be one or more of INSERT, UPDATE, DELETE (got %)',
            check_webhook_fields.events::text
            using errcode = 'invalid_parameter_value';
    end if;
end
$fn$;

create or replace function realtime.create_webhook(
    name text,
    url text,
    tables regclass[],
    events text[] default '{INSERT,UPDATE,DELETE}',
    filter text default null,
    secret text default null
) returns text
language plpgsql volatile set search_path = '' as $fn$
declare
    s text := realtime.check_webhook_secret(coalesce(create_webhook.secret, realtime.new_webhook_secret()));
    pos text := realtime.position_text(pg_catalog.pg_current_snapshot());
    evs text[] := pg_catalog.upper(create_webhook.events::text)::text[];
begin
    perform realtime.check_webhook_fields(coalesce(create_webhook.name, ''),
        coalesce(create_webhook.url, ''), coalesce(create_webhook.tables, '{}'),
        coalesce(evs, '{}'));
    if exists (select 1 from realtime.webhook_endpoints e where e.name = create_webhook.name) then
        raise exception 'webhook "%" already exists', create_webhook.name
            using errcode = 'duplicate_object',
                  hint = 'Change it with realtime.alter_webhook, or drop it first.';
    end if;
    perform realtime.enable_webhook_tables(create_webhook.tables);
    insert into realtime.webhook_endpoints (name, url, tables, events, filter, secret, position)
    values (create_webhook.name, create_webhook.url, create_webhook.tables, evs,
            create_webhook.filter, s, pos);
    perform realtime.hold_webhook_position(create_webhook.name, pos);
    return s;
end
$fn$;

-- Changes what is given (null leaves a field as it is; filter => '' removes the filter).
create or replace function realtime.alter_webhook(
    name text,
    url text default null,
    tables regclass[] default null,
    events text[] default null,
    filter text default null,
    secret text default null
) returns void
language plpgsql volatile set search_path = '' as $fn$
declare
    evs text[] := pg_catalog.upper(alter_webhook.events::text)::text[];
begin
    perform realtime.check_webhook_fields(null, alter_webhook.url, alter_webhook.tables, evs);
    if alter_webhook.tables is not null then
        perform realtime.enable_webhook_tables(alter_webhook.tables);
    end if;
    update realtime.webhook_endpoints e
    set url = coalesce(alter_webhook.url, e.url),
        tables = coalesce(alter_webhook.tables, e.tables),
        events = coalesce(evs, e.events),
        filter = case when alter_webhook.filter is null then e.filter
                      else nullif(alter_webhook.filter, '') end,
        secret = coalesce(realtime.check_webhook_secret(alter_webhook.secret), e.secret),
        version = e.version + 1,
        updated_at = pg_catalog.now()
    where e.name = alter_webhook.name;
    if not found then
        raise exception 'no webhook named "%"', alter_webhook.name using errcode = 'undefined_object';
    end if;
end
$fn$;

-- grant_hub (054) grants the new function too (declared endpoints call create and alter).
alter function realtime.grant_hub(text) rename to grant_hub_054;
create function realtime.grant_hub(hub text) returns void
language plpgsql volatile set search_path = '' as $fn$
begin
    perform realtime.grant_hub_054(hub);
    execute pg_catalog.format(
        'grant execute on function realtime.check_webhook_fields(text, text, regclass[], text[]) to %I',
        hub);
end
$fn$;
revoke all on function realtime.grant_hub(text) from public;
