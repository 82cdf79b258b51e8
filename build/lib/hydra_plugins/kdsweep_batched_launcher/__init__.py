"""kdsweep's Hydra launcher that trains a sweep's batch of trials as one vectorized model."""
