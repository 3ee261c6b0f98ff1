#!/usr/bin/env python3
"""Checks TOML files against the config's JSON Schema.

  schema_check.py SCHEMA FILE...   prints `FILE: ok` or `FILE: <path>: <problem>` per file,
                                   and exits 1 if any file does not conform.
"""
import json
import sys
import tomllib

from jsonschema import Draft202012Validator


def main():
    with open(sys.argv[1]) as f:
        validator = Draft202012Validator(json.load(f))
    failed = False
    for path in sys.argv[2:]:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        if not errors:
            print(f"{path}: ok")
        for e in errors:
            failed = True
            where = ".".join(str(p) for p in e.absolute_path) or "(top)"
            print(f"{path}: {where}: {e.message}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
