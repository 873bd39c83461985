"""The feedback store (PostgreSQL): schema, extraction to Parquet, run and deployment records."""
