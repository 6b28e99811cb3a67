-- Migration: 20250101000400_service_maintainers_and_status_reason.sql
--
-- Added by the contract, not in the seed:
-- * service_maintainers: who may change a service. The seed's `provider` is a display name, not
--   an account, so vendors' rights need a table of their own. The creator becomes the first
--   maintainer; platform admins add more.
-- * status_reason: why a platform admin approved, rejected or deprecated a service, shown to
--   its maintainers.

CREATE TABLE IF NOT EXISTS public.service_maintainers (
    service_id UUID NOT NULL REFERENCES public.service_registry(id) ON DELETE CASCADE,
    user_id UUID NOT NULL REFERENCES public.users(id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ DEFAULT NOW(),
    PRIMARY KEY (service_id, user_id)
);

CREATE INDEX IF NOT EXISTS idx_service_maintainers_user ON public.service_maintainers(user_id);

ALTER TABLE public.service_registry ADD COLUMN IF NOT EXISTS status_reason TEXT;
