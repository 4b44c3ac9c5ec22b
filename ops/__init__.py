"""Tools for people who run newsflow: the ops CLI, the embedded dev runtime, a sample partner."""
