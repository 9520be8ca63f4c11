"""Presets: every experiment as a small file of overrides on top of the defaults.

``presets/demo.yaml`` holds every setting, commented: the embedded demo, the defaults. Each other preset
(``presets/cityscapes-256p.yaml``, ...) holds only the keys its experiment changes, with a comment where
the value needs one. ``crn-repro preset NAME`` writes ``params.yaml``, the file DVC and every command
read: the defaults with the preset's values and comments merged in (a comment of the defaults that
described the demo's value is dropped where the preset changes the value). A test resolves and
validates every preset, so none can rot, and checks that the shipped params.yaml is the resolved demo.

The file is written the way DVC writes params when ``dvc exp run -S key=value`` changes one (ruamel's
round trip: nulls as empty values), so such an edit changes exactly its own line.
"""

from __future__ import annotations

import io
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from crn_repro.errors import CrnError, one_line
from crn_repro.files import atomic_write_text

PRESETS_DIR = Path("presets")
BASE = "demo"  # the preset that holds every setting


def _yaml() -> YAML:
    yaml = YAML()  # round trip: comments, key order and flow style are kept
    yaml.width = 4096  # never fold a long line
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def preset_names(presets_dir: Path = PRESETS_DIR) -> list[str]:
    return sorted(p.stem for p in Path(presets_dir).glob("*.yaml"))


def _load(path: Path) -> CommentedMap:
    if not path.is_file():
        raise CrnError(f"{path}: preset not found (presets: {', '.join(preset_names(path.parent)) or 'none'})")
    try:
        data = _yaml().load(path.read_text(encoding="utf-8"))
    except (YAMLError, UnicodeDecodeError) as error:
        raise CrnError(f"{path}: not valid YAML ({one_line(error)}); fix the file") from None
    if not isinstance(data, CommentedMap):
        raise CrnError(f"{path}: expected a mapping of params sections")
    return data


def _same_line_comment(node: CommentedMap, key) -> tuple[str | None, str]:
    """(the comment on ``key``'s line or None, the full-line comments after it) of a ruamel mapping."""
    entry = node.ca.items.get(key)
    token = entry[2] if entry and len(entry) > 2 else None
    if token is None:
        return None, ""
    line, newline, rest = token.value.partition("\n")
    return (line if line.strip() else None), rest


def _set_same_line_comment(node: CommentedMap, key, comment: str | None, column: int | None) -> None:
    _, rest = _same_line_comment(node, key)
    if comment is None and not rest:
        node.ca.items.pop(key, None)
        return
    if comment is None:  # keep the full-line comments that follow (e.g. the next section's heading)
        node.ca.items[key][2].value = "\n" + rest
        return
    node.yaml_add_eol_comment(comment.strip().removeprefix("#").strip(), key, column=column or 0)
    node.ca.items[key][2].value += "\n" + rest


def _merge(base: CommentedMap, over: CommentedMap, source: Path, where: str = "") -> None:
    """Merge ``over`` into ``base`` key by key; a model's ``train`` overrides (themselves exceptions
    to the global ``train``) are replaced as a whole, so a preset can also clear the demo's."""
    from crn_repro.registry import MODELS

    for key, value in over.items():
        if key not in base:
            raise CrnError(f"{source}: {where}{key}: not a key of {PRESETS_DIR / (BASE + '.yaml')} (valid: "
                           f"{', '.join(map(str, base))}); a preset only changes existing settings")
        replace = key == "train" and where.rstrip(".") in MODELS
        if isinstance(base[key], CommentedMap) and isinstance(value, CommentedMap) and not replace:
            _merge(base[key], value, source, f"{where}{key}.")
            if base[key].fa.flow_style():  # a one-line mapping: its comment spoke of the values just changed
                base[key].ca.comment = None  # (ruamel keeps a flow mapping's comment on the mapping too)
                comment, _ = _same_line_comment(over, key)
                entry = over.ca.items.get(key)
                _set_same_line_comment(base, key, comment, entry[2].column if comment is not None else None)
            continue
        comment, _ = _same_line_comment(over, key)
        entry = over.ca.items.get(key)
        column = entry[2].column if comment is not None and entry and entry[2] is not None else None
        base[key] = value
        _set_same_line_comment(base, key, comment, column)


def resolve(name: str, presets_dir: Path = PRESETS_DIR) -> str:
    """params.yaml for preset ``name``: presets/demo.yaml with the preset's overrides merged in."""
    presets_dir = Path(presets_dir)
    base = _load(presets_dir / f"{BASE}.yaml")
    header = [f"Written by `crn-repro preset {name}` from presets/{BASE}.yaml"
              + ("" if name == BASE else f" and the overrides in presets/{name}.yaml") + ".",
              "Change the preset and write it again, or edit this file: it is what `dvc repro` and every command read.",
              "A null is written as an empty value, as `dvc exp run -S` writes it."]
    if name != BASE:
        over = _load(presets_dir / f"{name}.yaml")
        _merge(base, over, presets_dir / f"{name}.yaml")
        intro = [line.strip().removeprefix("#").strip() for line in _start_comment(over)]
        header += [""] + [line for line in intro if line]
    else:
        header += [""] + [line.strip().removeprefix("#").strip() for line in _start_comment(base) if line.strip()]
    base.ca.comment = None
    base.yaml_set_start_comment("\n".join(header))
    buffer = io.StringIO()
    _yaml().dump(base, buffer)
    return buffer.getvalue()


def _start_comment(data: CommentedMap) -> list[str]:
    """The comment lines above a file's first key."""
    comment = data.ca.comment
    if not comment or len(comment) < 2 or not comment[1]:
        return []
    return [token.value.rstrip("\n") for token in comment[1]]


def write_preset(name: str, out: Path, force: bool = False, presets_dir: Path = PRESETS_DIR) -> Path:
    """Write the resolved preset ``name`` to ``out`` (atomically). An ``out`` that is not already
    some preset's resolution holds edits of its own: it is replaced only with ``force``."""
    from crn_repro.params import parse_params  # a preset that does not validate is never written

    text = resolve(name, presets_dir)
    try:
        parse_params(YAML(typ="safe").load(text), f"presets/{name}.yaml (resolved)")
    except CrnError as error:
        raise CrnError(str(error)) from None
    out = Path(out)
    if out.exists() and not force:
        current = out.read_text(encoding="utf-8", errors="replace")
        if current != text and all(current != resolve(other, presets_dir) for other in preset_names(presets_dir)):
            raise CrnError(f"{out}: has edits that no preset holds; keep them (commit or copy the file), "
                           "then run again with --force to replace it")
    atomic_write_text(out, text)
    return out
