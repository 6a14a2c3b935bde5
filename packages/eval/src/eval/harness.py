"""``python -m eval.harness ...``: lm-evaluation-harness's own CLI with the ``lmstack`` model registered.

    python -m eval.harness run --model lmstack --model_args pretrained=runs/x/step_1000,batch_size=8 \
        --tasks hellaswag --device cpu
    python -m eval.harness run --model lmstack --model_args pretrained=DIR --tasks lmstack_tiny_mc

The bundled offline tasks (``eval.tasks.TASKS_DIR``) are on the include path unless ``--include_path`` is given.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from specs.cli import run_cli


def _main(argv: Sequence[str] | None) -> int:
    from lm_eval.__main__ import cli_evaluate

    import eval.lm_eval_adapter  # noqa: F401  (registers "lmstack")
    from eval.tasks import TASKS_DIR

    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--include_path" or a.startswith("--include_path=") for a in args):
        args += ["--include_path", str(TASKS_DIR)]
    sys.argv = ["lm-eval", *args]
    cli_evaluate()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """lm-eval's CLI; an lmstack error (bad checkpoint path, no CUDA, unknown tokenizer) prints ``error: ...``."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
