-- A webhook URL is checked for what delivery needs, not only its scheme: one with no host
-- (`http:///path`), a port past 65535 (`http://host:99999/`) or of 2,049 characters or
-- more was accepted and then failed at every delivery attempt (`invalid port number`, a
-- misleading `failed to lookup address`). The errors do not repeat the URL (it may hold a
-- password). As in 055 otherwise; a null argument (alter_webhook leaving it) is not
-- checked.
create or replace function realtime.check_webhook_fields(
    name text, url text, tables regclass[], events text[]
) returns void
language plpgsql immutable set search_path = pg_catalog, pg_temp as $fn$
declare
    hostport text;
    host text;
    port text;
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
    if pg_catalog.length(check_webhook_fields.url) > 2048 then
        raise exception 'webhook url must be at most 2048 characters'
            using errcode = 'invalid_parameter_value';
    end if;
    -- The authority, without any user:password@.
    hostport := pg_catalog.regexp_replace(
        pg_catalog.substring(check_webhook_fields.url, '^[A-Za-z]+://([^/?#]*)'), '^.*@', '');
    if hostport ~ '^\[' then
        host := pg_catalog.substring(hostport, '^(\[[^]]*\])');
        port := pg_catalog.substring(hostport, '^\[[^]]*\](.*)$');
    else
        host := pg_catalog.substring(hostport, '^([^:]*)');
        port := pg_catalog.substring(hostport, '^[^:]*(.*)$');
    end if;
    if hostport is not null and coalesce(host, '') in ('', '[]') then
        raise exception 'webhook url must name a host, as in https://hooks.example.com/path'
            using errcode = 'invalid_parameter_value';
    end if;
    if coalesce(port, '') not in ('', ':') then
        if port !~ '^:[0-9]{1,5}$' then
            raise exception 'webhook url port must be a number from 1 to 65535'
                using errcode = 'invalid_parameter_value';
        end if;
        if pg_catalog.substr(port, 2)::int not between 1 and 65535 then
            raise exception 'webhook url port must be a number from 1 to 65535'
                using errcode = 'invalid_parameter_value';
        end if;
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
