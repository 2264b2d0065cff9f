"""`make bench`: load the real server from separate processes and report ratios to a baseline."""
