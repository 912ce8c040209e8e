"""The ``rcdm`` command: global options, the commands, and the error convention.

Exit codes: 0 success, 1 a runtime failure (corrupt file, failed download, ...),
2 a usage error (bad option, unknown name, missing input), 130 interrupted.
Errors print one line on stderr; ``--debug`` adds the traceback.

The global options (``--device``, ``--quiet``/``-q``, ``--debug``) may come before the
command or anywhere among its arguments, up to a ``--``: the root group lifts them out
before the command line is parsed.
"""

from __future__ import annotations

import inspect
import signal
import sys
import traceback
from contextlib import contextmanager
from typing import Iterator, Optional

import typer
from typer.core import CompletionItem, TyperCommand, TyperGroup

from rcdm_cli import __version__
from rcdm_cli.cli import arith as arith_cmd
from rcdm_cli.cli import attack as attack_cmd
from rcdm_cli.cli import attributes as attributes_cmd
from rcdm_cli.cli import convert as convert_cmd
from rcdm_cli.cli import demo as demo_cmd
from rcdm_cli.cli import encoders as encoders_cmd
from rcdm_cli.cli import evaluate as evaluate_cmd
from rcdm_cli.cli import interpolate as interpolate_cmd
from rcdm_cli.cli import sample as sample_cmd
from rcdm_cli.cli import train as train_cmd
from rcdm_cli.cli.console import err, settings, setup_logging
from rcdm_cli.errors import EXIT_INTERRUPTED, EXIT_RUNTIME, EXIT_USAGE, RcdmError, Terminated
from rcdm_cli.folderlock import release_all

# The global options a command line may hold after the command as well as before it.
GLOBAL_FLAGS = ("--quiet", "-q", "--debug")
GLOBAL_VALUED = ("--device",)
GLOBAL_EPILOG = "Global options --device, --quiet (-q) and --debug are accepted here too, before or after the arguments."


def split_global_options(args: list[str]) -> tuple[list[str], list[str], Optional[str]]:
    """``args`` as (the global options in it, everything else, a ``--device`` left
    without its value, if any). Tokens from a ``--`` on are left alone; so is a
    dangling ``--device``, which ends the second list."""
    lifted: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            return lifted, rest + args[i:], None
        if token in GLOBAL_FLAGS or ("=" in token and token.partition("=")[0] in GLOBAL_VALUED):
            lifted.append(token)
        elif token in GLOBAL_VALUED:
            if i + 1 == len(args):
                return lifted, rest + [token], token
            lifted += [token, args[i + 1]]
            i += 1
        else:
            rest.append(token)
        i += 1
    return lifted, rest, None


def _flags_without_metavar(params) -> None:
    """A flag takes no value: its help row shows no ``<bool>``."""
    for param in params:
        if getattr(param, "is_bool_flag", False) and param.metavar is None:
            param.metavar = ""


class _Command(TyperCommand):
    def format_help(self, ctx, formatter) -> None:
        _flags_without_metavar(self.get_params(ctx))
        super().format_help(ctx, formatter)

    def shell_complete(self, ctx, incomplete: str):
        """The command's own options, and the global options it accepts too."""
        results = super().shell_complete(ctx, incomplete)
        if incomplete and not incomplete[0].isalnum():
            for param in ctx.find_root().command.params:
                if param.name in ("device", "quiet", "debug"):
                    results += [CompletionItem(o, help=param.help) for o in param.opts if o.startswith(incomplete)]
        return results


class _Group(TyperGroup):
    def format_help(self, ctx, formatter) -> None:
        _flags_without_metavar(self.get_params(ctx))
        super().format_help(ctx, formatter)


class _RootGroup(_Group):
    """Lifts the global options out of the whole command line before parsing it."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        lifted, rest, dangling = split_global_options(args)
        if dangling is not None:
            if not ctx.resilient_parsing:
                ctx.fail(f"Option {dangling!r} requires an argument.")
            rest.pop()  # its value is being completed: nothing to offer, and no error
        return super().parse_args(ctx, lifted + rest)


app = typer.Typer(
    name="rcdm",
    cls=_RootGroup,
    help="See what an image representation knows: sample, interpolate and probe images with "
    "representation-conditional diffusion (RCDM).",
    epilog="The global options --device, --quiet (-q) and --debug may also follow the command, "
    "anywhere among its arguments: rcdm sample dog.jpg --device cpu.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rcdm {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    device: Optional[str] = typer.Option(
        None, "--device", envvar="RCDM_DEVICE", help="auto, cpu, cuda, cuda:N or mps (default: auto)."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logging."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    settings.device = device
    settings.debug = debug
    settings.quiet = quiet
    setup_logging(debug, quiet)


def _prose(doc: str | None) -> str:
    """A docstring as help text: paragraphs reflowed. Typer keeps the line breaks of
    every paragraph after the first, which the terminal then shows as ragged lines."""
    paragraphs = inspect.cleandoc(doc or "").split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


app.command("demo")(demo_cmd.demo)
app.command("train", no_args_is_help=True)(train_cmd.train)
app.command("sample", no_args_is_help=True)(sample_cmd.sample)
app.command("interpolate", no_args_is_help=True)(interpolate_cmd.interpolate)
app.command("arith", no_args_is_help=True)(arith_cmd.arith)
app.command("convert", no_args_is_help=True)(convert_cmd.convert)
app.command("encoders")(encoders_cmd.encoders)
app.command("encode", no_args_is_help=True)(encoders_cmd.encode)
app.command("attributes")(attributes_cmd.attributes)
app.command("attack", no_args_is_help=True)(attack_cmd.attack)
app.add_typer(evaluate_cmd.app, name="evaluate", cls=_Group, epilog=GLOBAL_EPILOG)
for _typer in (app, evaluate_cmd.app):
    for _info in _typer.registered_commands:
        _info.help = _prose(_info.help or _info.callback.__doc__)
        if _info.cls in (None, TyperCommand):  # one of its own would be kept
            _info.cls = _Command
        if GLOBAL_EPILOG not in (_info.epilog or ""):
            _info.epilog = "\n\n".join(filter(None, (_info.epilog, GLOBAL_EPILOG)))


# Typer has shipped click both as a dependency and vendored; reach its exception
# classes through a public name so both work.
_CLICK_ERRORS = {c.__name__: c for c in typer.BadParameter.__mro__}
_ClickUsageError = _CLICK_ERRORS["UsageError"]
_ClickException = _CLICK_ERRORS["ClickException"]


def _fail(message: str, code: int) -> int:
    # one line, whatever the message holds (an exception's text can span several)
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    err.print(f"rcdm: error: {line}", markup=False, highlight=False, soft_wrap=True)
    return code


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops a command as Ctrl-C does (finished outputs kept, manifests marked
    incomplete, one line, exit 143) instead of killing it where it stands. Training
    installs its own handler (save, then exit 0) while it runs."""

    def handler(signum, frame):
        raise Terminated("stopped by SIGTERM")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals to the caller
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (used by ``main`` and by tests)."""
    settings.debug = "--debug" in split_global_options(argv if argv is not None else sys.argv[1:])[0]
    command = typer.main.get_command(app)
    try:
        with _sigterm_interrupts():
            try:
                result = command.main(args=argv, prog_name="rcdm", standalone_mode=False)
            finally:
                release_all()  # the output folders this command claimed
        return result if isinstance(result, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except _ClickUsageError as exc:
        if not exc.format_message().strip():  # a command run bare: its help was the answer
            return EXIT_USAGE
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        return _fail(exc.format_message() + hint, EXIT_USAGE)
    except (typer.Abort, KeyboardInterrupt):
        return _fail("interrupted", EXIT_INTERRUPTED)
    except RcdmError as exc:
        if settings.debug:
            traceback.print_exc()
        return _fail(str(exc), exc.exit_code)
    except _ClickException as exc:
        return _fail(exc.format_message(), exc.exit_code)
    except Exception as exc:  # a bug: say so in one line, the traceback with --debug
        if settings.debug:
            traceback.print_exc()
            return _fail(f"internal error: {type(exc).__name__}: {exc}", EXIT_RUNTIME)
        return _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", EXIT_RUNTIME)


def main() -> None:
    sys.exit(run())
