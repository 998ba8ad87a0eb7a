"""One trial's training: the Trainer recipe, checkpoints, optimizer, signals, progress, sinks."""
