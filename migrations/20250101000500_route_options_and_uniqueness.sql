-- Migration: 20250101000500_route_options_and_uniqueness.sql
--
-- Added by the contract, not in the seed:
-- * options: per-route settings beyond the seed's columns (timeouts, body limit, cache scope),
--   validated by the API, so the seed's columns keep their meaning.
-- * one route per (service, installation, path, method): without it two routes could claim the
--   same request and the proxy's choice would be arbitrary. NULLS NOT DISTINCT (PostgreSQL 15+)
--   because service-wide routes have installation_id NULL and must be unique too.

ALTER TABLE public.service_api_routes ADD COLUMN IF NOT EXISTS options JSONB DEFAULT '{}'::jsonb;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'unique_route') THEN
        ALTER TABLE public.service_api_routes
            ADD CONSTRAINT unique_route
            UNIQUE NULLS NOT DISTINCT (service_id, installation_id, route_path, method);
    END IF;
END;
$$;
