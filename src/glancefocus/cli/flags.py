"""Command-line flags made from config dataclass fields, so a new field is a new flag with
no hand-written mapping: ``TrainConfig.stage1_epochs`` is ``--stage1-epochs``."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal


def _scalar_type(hint: Any) -> tuple[Any, bool]:
    """(the non-None type of a field's annotation, whether None is allowed)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def add_fields(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    prefix: str,
    *,
    only: tuple[str, ...] | None = None,
    skip: tuple[str, ...] = (),
    names: dict[str, str] | None = None,
    defaults: dict[str, Any] | None = None,
) -> None:
    """One flag per scalar field of dataclass ``cls`` (``only`` those, less ``skip``); each
    defaults to None ("keep the config's value") unless ``defaults`` says otherwise, and
    lands in ``args`` as ``<prefix>.<field>``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if (only is not None and f.name not in only) or f.name in skip:
            continue
        kind, _ = _scalar_type(hints[f.name])
        flag = (names or {}).get(f.name, "--" + f.name.replace("_", "-"))
        options: dict[str, Any] = {"dest": f"{prefix}.{f.name}", "default": (defaults or {}).get(f.name),
                                   "help": f.metadata.get("help")}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is Literal:
            options["choices"] = list(typing.get_args(kind))
        elif kind in (int, float, str):
            options["type"], options["metavar"] = kind, f.name.upper()
        elif typing.get_origin(kind) is tuple and set(typing.get_args(kind)) == {int}:  # e.g. --scale-range LO HI
            options["type"], options["nargs"] = int, len(typing.get_args(kind))
            options["metavar"] = ("LO", "HI") if options["nargs"] == 2 else f.name.upper()
        elif typing.get_args(kind) == (str, ...):  # e.g. --reads glance,patch,whole:224
            options["type"], options["metavar"] = _comma_list, f.name.upper()
        else:
            continue  # nested configs and tuples are not flags
        parser.add_argument(flag, **options)


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def given_fields(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    """The fields under ``prefix`` that were given on the command line (not None)."""
    start = prefix + "."
    return {k[len(start):]: tuple(v) if isinstance(v, list) else v
            for k, v in vars(args).items() if k.startswith(start) and v is not None}
