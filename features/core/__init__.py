"""Pure computation: arrays and frames in, arrays and frames out; no files, no services, no models loaded."""
