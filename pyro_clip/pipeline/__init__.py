"""One run end to end: configuration, fitting, evaluation, the demo."""
