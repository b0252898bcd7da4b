"""`lsde-<app> --help`: what the app does in a line, how to call it, its own config groups (read from the app's
config, with the default marked), the keys users change most, and examples. Hydra's generic help lists every group
of the tree; this one lists the app's. `--hydra-help` still shows Hydra's."""

from __future__ import annotations

import sys

import yaml

from lightning_sde.configuration import config_root

NOT_GROUPS = {"_self_", "paths", "hydra"}


def app_groups(app: str) -> list[tuple[str, str | None, list[str]]]:
    """(group, its default in the app's config, every option) for each config group the app composes."""
    root = config_root()
    config = yaml.safe_load((root / f"{app}.yaml").read_text()) or {}
    out, seen = [], set()
    for entry in config.get("defaults", []):
        if isinstance(entry, str):  # a base config (compare.yaml extends bench.yaml)
            if entry not in NOT_GROUPS and (root / f"{entry}.yaml").is_file():
                out += [g for g in app_groups(entry) if g[0] not in seen]
                seen.update(g[0] for g in out)
            continue
        key, default = next(iter(entry.items()))
        group = key.removeprefix("override ").lstrip("/")
        if group in NOT_GROUPS or "@" in group or not (root / group).is_dir():
            continue
        options = sorted(p.stem for p in (root / group).glob("*.yaml"))
        out = [g for g in out if g[0] != group] + [(group, default, options)]
        seen.add(group)
    return out


def render(app: str, summary: str, usage: list[str], keys: list[tuple[str, str]], examples: str) -> str:
    name = f"lsde-{app}"
    lines = [f"{name}: {summary}", "", "Usage:"]
    lines += [f"  {name} {u}" for u in usage]
    lines += ["", "Config groups (group=option; * is the default):"]
    for group, default, options in app_groups(app):
        marked = ", ".join(f"{o}*" if o == default else o for o in options)
        lines.append(f"  {group:<11} {marked}" + ("   (none by default)" if default is None else ""))
    lines += ["", "Keys users change most:"]
    width = max(len(k) for k, _ in keys)
    lines += [f"  {k:<{width}}  {what}" for k, what in keys]
    lines += ["", "Examples:", *[f"  {line.strip()}" for line in examples.strip().splitlines() if line.strip()]]
    lines += ["", f"The composed config: {name} --cfg job [overrides]. Hydra's own options: {name} --hydra-help."]
    return "\n".join(lines)


def print_help_if_asked(app: str, summary: str, usage: list[str], keys: list[tuple[str, str]], examples: str,
                        argv: list[str] | None = None) -> bool:
    """Print the app's help and return True when argv asks for it (--help or -h)."""
    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(render(app, summary, usage, keys, examples))
        return True
    return False
