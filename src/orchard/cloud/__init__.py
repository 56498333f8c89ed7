"""Cloud glue kept apart from the pipeline: S3 settings for Spark (s3), environment packaging, AWS EMR (emr*)."""
