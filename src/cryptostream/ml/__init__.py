"""Machine learning on closed 1-minute windows: features, anomaly detectors, forecasters,
walk-forward evaluation, persistence and the live scoring stage."""
