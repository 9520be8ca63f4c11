"""Presets: every experiment as a small file of overrides on top of the defaults.

``presets/demo.yaml`` holds every setting, commented: the embedded demo, the defaults. Each other preset
(``presets/cityscapes-256p.yaml``, ...) holds only the keys its experiment changes, with a comment where
the value needs one. ``crn-repro preset NAME`` writes ``params.yaml``, the file DVC and every command
read: the defaults with the preset's values and comments merged in (a comment of the defaults that
described the demo's value is dropped where the preset changes the value). ``--params`` also takes a
preset file itself (``-p presets/cityscapes-1024p.yaml``), resolved the same way. A test resolves and
validates every preset, so none can rot, and checks that the shipped params.yaml is the resolved demo.

The file is written the way DVC writes params when ``dvc exp run -S key=value`` changes one (ruamel's
round trip with DVC's settings: lists in block style, nulls as empty values), so that such an edit
changes exactly its own line: DVC rewrites every list of the file in block style (it replaces each with
the plain list its override machinery returns), whatever style the file had.
"""

from __future__ import annotations

import io
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from crn_repro.errors import CrnError, one_line
from crn_repro.files import parse_yaml

PRESETS_DIR = Path("presets")
BASE = "demo"  # the preset that holds every setting


def _yaml() -> YAML:
    """ruamel's round trip (comments and key order kept) with the settings DVC dumps params with
    (``dvc.utils.serialize._yaml._get_yaml``), so that a file we write is what DVC writes back."""
    yaml = YAML()
    yaml.default_flow_style = False
    return yaml


def _as_dvc_writes(node):
    """``node`` with every list replaced by a plain one (block style), recursively, as DVC's
    ``apply_overrides`` leaves a params file: it merges the overridden config back key by key and
    replaces every non-mapping value, lists included, by the plain value OmegaConf returns."""
    if isinstance(node, dict):
        for key, value in node.items():
            node[key] = _as_dvc_writes(value)
        return node
    if isinstance(node, list):
        return [_plain(item) for item in node]
    return node


def _plain(node):
    if isinstance(node, dict):
        return {key: _plain(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_plain(item) for item in node]
    return node


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
              "Lists and nulls are written as `dvc exp run -S` writes them (block lists, empty values), so -S changes one line."]
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
    _yaml().dump(_as_dvc_writes(base), buffer)
    return buffer.getvalue()


def _start_comment(data: CommentedMap) -> list[str]:
    """The comment lines above a file's first key."""
    comment = data.ca.comment
    if not comment or len(comment) < 2 or not comment[1]:
        return []
    return [token.value.rstrip("\n") for token in comment[1]]


def load_preset(name: str, presets_dir: Path = PRESETS_DIR) -> dict:
    """The values of preset ``name`` resolved over the defaults, read as DVC reads params.yaml."""
    presets_dir = Path(presets_dir)
    return parse_yaml(resolve(name, presets_dir), f"{presets_dir / name}.yaml (resolved over {presets_dir / BASE}.yaml)",
                      "fix the preset file")


def preset_file(path: Path) -> tuple[str, Path] | None:
    """(name, presets folder) when ``path`` is a preset: a YAML file in a folder that holds the defaults
    (``demo.yaml``), as ``presets/`` does; None for any other file."""
    path = Path(path)
    if path.suffix == ".yaml" and path.is_file() and (path.parent / f"{BASE}.yaml").is_file():
        return path.stem, path.parent
    return None


def _flatten(values, prefix: str = "") -> dict:
    """{dotted key: value} of nested mappings (lists and scalars are values)."""
    if not isinstance(values, dict) or not values:
        return {prefix.rstrip("."): values} if prefix else {}
    out = {}
    for key, value in values.items():
        out.update(_flatten(value, f"{prefix}{key}."))
    return out


def edits(values: dict, preset: dict) -> list[str]:
    """The settings in which ``values`` differ from ``preset``, compared as values (as DVC reads them: a
    list's layout, quoting, a comment or ``1e-3`` written as ``0.001`` are no edit), one per key:
    ``train.total_steps: 7 (preset: 400)``."""
    mine, theirs = _flatten(values), _flatten(preset)
    out = []
    for key in sorted(mine.keys() | theirs.keys()):
        if key not in theirs:
            out.append(f"{key}: {mine[key]!r} (no such setting in the preset)")
        elif key not in mine:
            out.append(f"{key}: missing (preset: {theirs[key]!r})")
        elif mine[key] != theirs[key] or isinstance(mine[key], bool) != isinstance(theirs[key], bool):
            out.append(f"{key}: {mine[key]!r} (preset: {theirs[key]!r})")
    return out


def closest_preset(values, presets_dir: Path = PRESETS_DIR) -> tuple[str, list[str]]:
    """(the preset whose values ``values`` equal, or the one it differs from in the fewest settings,
    ``edits`` against it)."""
    found = [(name, edits(values if isinstance(values, dict) else {}, load_preset(name, presets_dir)))
             for name in preset_names(presets_dir)]
    return min(found, key=lambda item: (len(item[1]), item[0] != BASE))
