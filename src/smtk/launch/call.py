"""``python -m smtk.launch.call pkg.mod:function``: the ``SAGEMAKER_TRAINING_MODULE`` runner.

The reference imports the module and calls the function inside its own process; smtk
runs it as a child process instead, so a function entry point gets the same signal
forwarding, log streaming and failure report as a script. The function is called with
no arguments (as the reference does). ``SystemExit`` passes through; any other
exception prints its traceback and exits with status 1.
"""

from __future__ import annotations

import importlib
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 1 or ":" not in argv[0]:
        print("usage: python -m smtk.launch.call package.module:function", file=sys.stderr)
        return 2
    module_name, _, function_name = argv[0].partition(":")
    module = importlib.import_module(module_name)
    function = getattr(module, function_name, None)
    if not callable(function):
        print(f"{module_name!r} has no callable named {function_name!r}", file=sys.stderr)
        return 2
    result = function()
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
