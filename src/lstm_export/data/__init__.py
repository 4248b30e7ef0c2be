"""MNIST data: IDX files, the offline fetcher, and the preprocessing shared by every stage."""
