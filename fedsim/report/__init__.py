"""What people read of finished runs: report tables (`tables`), plots (`analysis`) and the experiment
trackers a run writes to as it goes (`tracking`: TensorBoard, MLflow)."""
