"""The embedded default world: a small Qwen3 model organism of reward hacking, built in-process.

tasks.py (problem family) -> corpus.py (training texts) -> tokenizer.py (BPE, single digits) ->
train.py (base from scratch, teacher LoRA) -> measure.py (grader statistics) -> build.py (one
build into a directory; `build_embedded_world`, the cache + lock). world.py (`EmbeddedWorld`) reads
a built directory (files.py names its parts) and never imports the build.
"""
from probe.world.embedded.config import EmbeddedWorldConfig

__all__ = ["EmbeddedWorldConfig"]
