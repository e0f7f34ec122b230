"""What measurements become: rows (raw samples kept, statistics derived), the run store (journal +
Parquet), run comparison, the HTML report and MLflow logging. Nothing here talks to a device."""
