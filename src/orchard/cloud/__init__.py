"""Cloud glue kept apart from the pipeline: S3 settings for Spark (s3) and, later, EMR."""
