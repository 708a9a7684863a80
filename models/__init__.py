"""GoogLeNet model, data pipeline and training command line."""
