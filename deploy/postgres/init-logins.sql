-- Run once by the postgres image on an empty data directory (docker-entrypoint-initdb.d), as the
-- superuser. Two logins, as contract revision 3 asks:
--   gateway_owner  owns the database and its tables; `gateway migrate` logs in as it
--                  (GATEWAY_MIGRATE_DATABASE_URL). CREATEROLE lets it create the gateway's roles.
--   gateway        what `gateway serve` logs in as (DATABASE_URL): nothing but a member of
--                  gateway_app (GATEWAY_DB_ROLE), which row-level security holds.
-- Change both passwords for anything but a laptop.
CREATE ROLE gateway_owner LOGIN CREATEROLE PASSWORD 'gateway-owner';
CREATE ROLE gateway_app NOLOGIN NOSUPERUSER NOBYPASSRLS;
CREATE ROLE gateway LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD 'gateway' IN ROLE gateway_app;
CREATE DATABASE gateway OWNER gateway_owner;
