"""MIND data layer: schema, validating reader, Parquet store, download, synthetic generator."""
