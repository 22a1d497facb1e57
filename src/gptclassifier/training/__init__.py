"""Fine-tuning's machinery: the device, pooling, the runners, the chapter's loop, FLOP counts."""
