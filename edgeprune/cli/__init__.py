"""The edgeprune command line: a thin layer over the Python API, one module per command group."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def _interrupted_while_starting(signum, frame) -> None:
    os.write(2, b"interrupted\n")  # nothing has been written yet: nothing to clean up
    os._exit(130)


# As the program (`edgeprune ...`, `python -m edgeprune.cli`), a Ctrl-C while the libraries below
# import is an interrupt like any other; main() puts its own handler in place once they have.
if sys.argv and (sys.argv[0] == "-m" or Path(sys.argv[0]).name == "edgeprune"):
    signal.signal(signal.SIGINT, _interrupted_while_starting)

import click  # noqa: E402
from rich.markup import escape  # noqa: E402

from edgeprune.cli.build import build, check, plan_cmd, sweep_cmd  # noqa: E402
from edgeprune.cli.common import err  # noqa: E402
from edgeprune.cli.device import agent, bench, trt_build  # noqa: E402
from edgeprune.cli.farm import farm  # noqa: E402
from edgeprune.cli.llm import llm  # noqa: E402
from edgeprune.cli.profiles import profiles  # noqa: E402
from edgeprune.errors import BudgetMissed, EdgepruneError  # noqa: E402


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgeprune")
def cli() -> None:
    """Prune, quantize and lower PyTorch models for edge devices; prove and gate the result."""


for command in (profiles, build, plan_cmd, sweep_cmd, check, trt_build, bench, agent, farm, llm):
    cli.add_command(command)


_interrupted: list[bool] = []


def _on_sigint(signum, frame) -> None:
    _interrupted.append(True)
    raise KeyboardInterrupt


def _exit_interrupted() -> None:
    """Exits 130 after one line. os._exit, because an interrupt that landed inside a native library's
    own Python code marks the interpreter to kill itself with SIGINT at exit (status -2, not 130)."""
    err.print("interrupted")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def main() -> None:
    """Runs the CLI: one clear line and exit 2 for bad input, no tracebacks for user mistakes."""
    # Ctrl-C inside a native library's import or call can surface as that library's own error
    # (onnxruntime's "ImportError: initialization failed"); the flag says it was an interrupt.
    previous = signal.signal(signal.SIGINT, _on_sigint)
    _interrupted.clear()
    try:
        _run()
    finally:
        signal.signal(signal.SIGINT, previous)


def _run() -> None:
    try:
        code = cli.main(standalone_mode=False, prog_name="edgeprune")
    except click.exceptions.Abort:
        _exit_interrupted()
    except click.ClickException as exc:  # a flag click itself refused: one line too, and where help is
        ctx = getattr(exc, "ctx", None)
        where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        err.print(f"[red]error:[/red] {escape(exc.format_message())}{where}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _exit_interrupted()
    except BudgetMissed as exc:
        err.print(f"[red]FAILED[/red] {escape(str(exc))}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except EdgepruneError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)  # "[coreml]" is not markup
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except Exception as exc:  # the unexpected: one line, a traceback only on request
        if _interrupted:
            _exit_interrupted()
        if os.environ.get("EDGEPRUNE_DEBUG"):
            raise
        err.print(f"[red]internal error:[/red] {type(exc).__name__}: {exc} (set EDGEPRUNE_DEBUG=1 for a traceback)",
                  soft_wrap=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
