"""Training loops and hyper-parameter selection shared by the trained methods."""
