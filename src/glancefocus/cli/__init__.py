"""Command-line interface: ``glancefocus {train,evaluate,predict,export,serve,visualize,demo,recipes,import-release}``.

``parser`` builds the parser, ``commands`` holds one function per subcommand, ``flags`` makes
flags from config fields.  Torch is imported by the subcommands that need it, not here:
``predict --onnx`` and ``serve`` run without it.
"""

from __future__ import annotations

import re
import sys

from .parser import build_parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except Exception as e:
        if not isinstance(e, _user_errors()):
            raise
        print(f"glancefocus: error: {_message(e)}", file=sys.stderr)
        return 2
    return 0


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors reported as a message, not a traceback; NonFiniteLoss only where training ran
    (importing the trainer would import torch)."""
    trainer = sys.modules.get("glancefocus.training.trainer")
    return (ValueError, FileNotFoundError, ImportError, *((trainer.NonFiniteLoss,) if trainer else ()))


def _message(error: Exception) -> str:
    """The error's own message; a DataLoader worker's error arrives wrapped with the worker's
    traceback ("Caught ValueError in DataLoader worker ..."), whose last line is the message."""
    text = str(error)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]  # "module.ErrorClass: message"
        return re.sub(r"^[\w.]+: ", "", last, count=1)
    return text

