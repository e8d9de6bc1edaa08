"""Recipe schema and loader: YAML → validated tree of frozen dataclasses."""
