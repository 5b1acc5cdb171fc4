"""Runs inside a real engine's environment (scripts/engine-env.sh) and parses command lines
with that engine's own argument parser. Not part of glowplug: the standard library and the
engine only, because this runs under the engine venv's python, not glowplug's.

stdin: {"engine": "sglang" | "vllm", "mode": "parse" | "flags", "argvs": [[...], ...]}
stdout (last line): one JSON object:
  {"import_seconds": s, "version": v, "flags": [every option string the parser
   accepts, sorted], "store_true": [those that take no value]}, and in parse mode also
   "results": [{"ok", "exit_code", "error", "seconds", "parsed"}, ...] where "parsed"
   holds the parser's namespace as JSON values.
One process for every argv: importing an engine takes several seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import sys
import time
from collections.abc import Callable
from typing import Any


def _fields(value: Any) -> dict[str, Any] | None:
    """The fields of a parsed-arguments object: SGLang's ServerArgs is a msgspec Struct
    (0.5.23; a dataclass before), vLLM's is an argparse Namespace."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    names = getattr(type(value), "__struct_fields__", None)
    if names is not None:
        return {n: getattr(value, n) for n in names}
    if isinstance(value, argparse.Namespace):
        return vars(value)
    return None


def _jsonable(value: Any) -> Any:
    fields = _fields(value)
    if fields is not None:
        return {k: _jsonable(v) for k, v in fields.items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def _sglang() -> tuple[Callable[[list[str]], Any], Callable[[], argparse.ArgumentParser], str]:
    import sglang
    from sglang.srt import server_args

    def parse(argv: list[str]) -> Any:
        # What `python3 -m sglang.launch_server ARGV` does first (launch_server.py).
        return server_args.prepare_server_args(argv)

    def parser() -> argparse.ArgumentParser:
        p = argparse.ArgumentParser()
        server_args.ServerArgs.add_cli_args(p)
        return p

    return parse, parser, str(getattr(sglang, "__version__", "?"))


def _vllm() -> tuple[Callable[[list[str]], Any], Callable[[], argparse.ArgumentParser], str]:
    import vllm
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    def parser() -> argparse.ArgumentParser:
        built: argparse.ArgumentParser = make_arg_parser(FlexibleArgumentParser())
        return built

    built = parser()

    def parse(argv: list[str]) -> Any:
        # What `python3 -m vllm.entrypoints.openai.api_server ARGV` does before it loads
        # anything (vllm/entrypoints/launchers/api_server/entry.py: main).
        args = built.parse_args(argv)
        validate_parsed_serve_args(args)
        return args

    return parse, parser, str(getattr(vllm, "__version__", "?"))


ENGINES = {"sglang": _sglang, "vllm": _vllm}


def _parse_one(parse: Callable[[list[str]], Any], argv: list[str]) -> dict[str, Any]:
    err = io.StringIO()
    start = time.monotonic()
    result: dict[str, Any] = {"ok": False, "exit_code": None, "error": "", "parsed": None}
    try:
        with contextlib.redirect_stderr(err):
            ns = parse(argv)
        result["ok"] = True
        result["parsed"] = _jsonable(ns)
    except SystemExit as exc:  # argparse: unknown flag, bad value, missing value
        result["exit_code"] = exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:  # a validation the engine runs at startup, before loading
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["seconds"] = round(time.monotonic() - start, 4)
    # argparse's message is the last line it printed; keep it for the assertion message.
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    if not result["ok"] and lines and not result["error"]:
        result["error"] = lines[-1]
    return result


def main() -> int:
    request = json.load(sys.stdin)
    start = time.monotonic()
    with contextlib.redirect_stdout(sys.stderr):  # engines log on import
        parse, parser, version = ENGINES[request["engine"]]()
    imported = round(time.monotonic() - start, 2)
    p = parser()
    out: dict[str, Any] = {
        "import_seconds": imported,
        "version": version,
        "flags": sorted({s for a in p._actions for s in a.option_strings}),
        "store_true": sorted({s for a in p._actions if a.nargs == 0 for s in a.option_strings}),
    }
    if request.get("mode") != "flags":
        with contextlib.redirect_stdout(sys.stderr):
            out["results"] = [_parse_one(parse, list(argv)) for argv in request["argvs"]]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
