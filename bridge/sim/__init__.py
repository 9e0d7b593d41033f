"""Device simulators: the far end of each channel, on loopback, with simple honest physics."""
