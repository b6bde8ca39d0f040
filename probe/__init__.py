"""probe: a test-suite-as-specification harness for the v_hack distillation cosine probe."""

__version__ = "0.1.0"
