-- Migration: 20250101000100_marketplace.sql
--
-- The seed's marketplace tables, column for column. One deliberate difference: the seed declares
-- the slug's uniqueness twice (`slug ... UNIQUE` and `CONSTRAINT unique_slug UNIQUE (slug)`),
-- which would create two identical unique indexes. It is created once, as the named
-- constraint `unique_slug`.

CREATE TABLE IF NOT EXISTS public.service_registry (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name VARCHAR(255) NOT NULL,
    slug VARCHAR(255) NOT NULL,
    description TEXT,
    version VARCHAR(50) NOT NULL,
    provider VARCHAR(255) NOT NULL,
    provider_url TEXT,
    category VARCHAR(100), -- 'business-intelligence', 'service-management', etc.
    status VARCHAR(50) DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'rejected', 'deprecated')),

    -- Capabilities
    capabilities JSONB DEFAULT '{}'::jsonb,

    -- API Configuration
    api_base_url TEXT,
    api_auth_type VARCHAR(50), -- 'oauth2', 'api_key', 'bearer', 'none'
    api_auth_config JSONB DEFAULT '{}'::jsonb,

    -- UI Configuration
    ui_type VARCHAR(50), -- 'iframe', 'react_component', 'web_component'
    ui_config JSONB DEFAULT '{}'::jsonb,

    -- Webhook Configuration
    webhook_supported BOOLEAN DEFAULT false,
    webhook_events TEXT[],

    -- Metadata
    icon_url TEXT,
    screenshots TEXT[],
    documentation_url TEXT,
    support_url TEXT,
    pricing_info JSONB,

    -- Installation Stats
    installation_count INTEGER DEFAULT 0,
    rating DECIMAL(3,2),
    review_count INTEGER DEFAULT 0,

    -- Security
    verified BOOLEAN DEFAULT false,
    security_audit JSONB,

    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW(),
    deleted_at TIMESTAMPTZ,

    CONSTRAINT unique_slug UNIQUE (slug)
);

CREATE INDEX IF NOT EXISTS idx_service_registry_category ON public.service_registry(category);
CREATE INDEX IF NOT EXISTS idx_service_registry_status ON public.service_registry(status);
CREATE INDEX IF NOT EXISTS idx_service_registry_verified ON public.service_registry(verified);

CREATE TABLE IF NOT EXISTS public.service_installations (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    service_id UUID REFERENCES public.service_registry(id) ON DELETE CASCADE,
    space_id UUID REFERENCES public.spaces(id) ON DELETE CASCADE,
    installed_by UUID REFERENCES public.users(id),

    -- Configuration
    config JSONB DEFAULT '{}'::jsonb,
    credentials JSONB DEFAULT '{}'::jsonb, -- Encrypted (AES-256-GCM envelope, see db/encryption.py)

    -- Status
    status VARCHAR(50) DEFAULT 'active' CHECK (status IN ('active', 'inactive', 'error')),
    last_health_check TIMESTAMPTZ,
    health_status VARCHAR(50),

    -- Permissions
    permissions JSONB DEFAULT '{}'::jsonb,

    installed_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW(),
    deleted_at TIMESTAMPTZ,

    UNIQUE(service_id, space_id)
);

CREATE INDEX IF NOT EXISTS idx_service_installations_space ON public.service_installations(space_id);
CREATE INDEX IF NOT EXISTS idx_service_installations_service ON public.service_installations(service_id);
CREATE INDEX IF NOT EXISTS idx_service_installations_status ON public.service_installations(status);

CREATE TABLE IF NOT EXISTS public.service_ui_components (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    service_id UUID REFERENCES public.service_registry(id) ON DELETE CASCADE,
    installation_id UUID REFERENCES public.service_installations(id) ON DELETE CASCADE,

    component_type VARCHAR(50), -- 'widget', 'page', 'sidebar', 'modal'
    component_name VARCHAR(255),
    component_id VARCHAR(255),

    -- Rendering Config
    render_type VARCHAR(50), -- 'iframe', 'react', 'web_component'
    render_config JSONB DEFAULT '{}'::jsonb,

    -- Placement
    placement VARCHAR(50), -- 'dashboard', 'sidebar', 'settings'
    placement_config JSONB DEFAULT '{}'::jsonb,

    -- Permissions
    required_permissions TEXT[],

    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW()
);

CREATE INDEX IF NOT EXISTS idx_service_ui_components_service ON public.service_ui_components(service_id);
CREATE INDEX IF NOT EXISTS idx_service_ui_components_installation ON public.service_ui_components(installation_id);

CREATE TABLE IF NOT EXISTS public.service_api_routes (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    service_id UUID REFERENCES public.service_registry(id) ON DELETE CASCADE,
    installation_id UUID REFERENCES public.service_installations(id) ON DELETE CASCADE,

    route_path VARCHAR(255) NOT NULL,
    method VARCHAR(10) NOT NULL,
    target_url TEXT NOT NULL,

    -- Authentication
    auth_type VARCHAR(50),
    auth_config JSONB DEFAULT '{}'::jsonb,

    -- Rate Limiting
    rate_limit INTEGER,
    rate_limit_window INTEGER,

    -- Caching
    cache_enabled BOOLEAN DEFAULT false,
    cache_ttl INTEGER,

    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW()
);

CREATE INDEX IF NOT EXISTS idx_service_api_routes_service ON public.service_api_routes(service_id);
CREATE INDEX IF NOT EXISTS idx_service_api_routes_installation ON public.service_api_routes(installation_id);
