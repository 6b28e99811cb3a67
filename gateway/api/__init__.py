"""The /api/v1 registry and infrastructure API.

Importing a resource module registers its endpoints; `RESOURCES` is the full list, in the order
the OpenAPI document shows them.
"""

from gateway.api import (  # noqa: F401  (imported for their @endpoint registrations)
    services,
    service_routes,
    ui_components,
    installations,
    installation_routes,
    api_keys,
    instances,
    instance_services,
    assignments,
    audit_log,
    webhooks,
    openapi,
)
