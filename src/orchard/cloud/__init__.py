"""Cloud control plane, kept apart from the pipeline: environment packaging (package), AWS EMR and EMR
Serverless (emr, emr_config, emr_driver, serverless, doctor) and what they cost (emr_cost, throughput)."""
