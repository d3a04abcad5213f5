"""User errors in launchers: one line on stderr and exit status 1, not a traceback.

Library code raises ValueError (bad values, files, flags; its message names the file, field
or flag and what was expected) or OSError (a file that is missing or unreadable). A launcher
wraps its absl main once:

  if __name__ == "__main__":
    app.run(cli_errors.user_errors(main))

and such an error ends the program with `<launcher>: error: <message>` (one line). Other
exceptions are bugs and keep their traceback; `BES_TRACEBACK=1` keeps it for user errors too.
"""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable

USER_ERRORS = (ValueError, OSError)


def one_line(program: str, error: BaseException) -> str:
  """`<program>: error: <message>` with the message's lines joined by spaces."""
  message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
  return f"{program}: error: {message or type(error).__name__}"


def user_errors(main: Callable[[list[str]], object]) -> Callable[[list[str]], object]:
  """`main` (an absl main taking argv) with USER_ERRORS turned into `one_line` on stderr and
  exit status 1."""
  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except USER_ERRORS as e:
      if os.environ.get("BES_TRACEBACK"):
        raise
      sys.exit(one_line(os.path.basename(sys.argv[0]) or "bes", e))
  return wrapped
