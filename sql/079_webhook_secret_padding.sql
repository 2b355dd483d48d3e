-- A secret whose base64 lacks its `=` padding (or is cut short) got Postgres's own
-- `invalid base64 end sequence`: decode's error has the same SQLSTATE
-- (invalid_parameter_value) as the function's own, so 030's handler raised it again as
-- it was. The decode now runs in its own block; every refusal says what a secret must be.
create or replace function realtime.check_webhook_secret(secret text) returns text
language plpgsql immutable set search_path = pg_catalog, pg_temp as $fn$
declare
    bytes int;
begin
    if secret is null then
        return null;  -- alter_webhook without a new secret
    end if;
    begin
        bytes := case when secret ~ '^whsec_[A-Za-z0-9+/]+={0,2}$'
                      then pg_catalog.length(pg_catalog.decode(pg_catalog.substr(secret, 7), 'base64'))
                 end;
    exception when others then
        bytes := null;
    end;
    if bytes is null or bytes < 16 then
        raise exception 'webhook secret must be whsec_ followed by at least 16 bytes in base64 (with its = padding)'
            using errcode = 'invalid_parameter_value',
                  hint = 'Leave the secret out and one is generated.';
    end if;
    return secret;
end
$fn$;
