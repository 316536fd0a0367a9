"""Running work on Ray and Slurm clusters (local single-node Ray by default)."""
