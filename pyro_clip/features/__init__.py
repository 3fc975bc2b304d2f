"""Image features: the on-disk cache, extraction through a backbone, augmented views."""
