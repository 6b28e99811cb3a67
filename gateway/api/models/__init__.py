"""Request and response models of the /api/v1 API (validation and OpenAPI from one source)."""
