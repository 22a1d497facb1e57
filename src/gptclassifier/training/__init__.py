"""Fine-tuning: the device, pooling, the ways a run computes, the loop and the whole run."""
