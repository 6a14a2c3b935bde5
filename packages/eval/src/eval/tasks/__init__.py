"""Small lm-eval tasks bundled with lmstack (YAML + JSONL), runnable offline.

``lm_eval.tasks.TaskManager(include_path=str(TASKS_DIR))`` makes ``lmstack_tiny_mc`` (multiple choice),
``lmstack_tiny_text`` (rolling log-likelihood) and ``lmstack_tiny_qa`` (generate_until) available
(``include_defaults=False`` skips indexing lm-eval's own tasks).
"""

from pathlib import Path

TASKS_DIR = Path(__file__).parent
TASK_NAMES = ("lmstack_tiny_mc", "lmstack_tiny_text", "lmstack_tiny_qa")
