"""The authors' released CRN checkpoints (docs/facts.md §10) as model files of this project.

The release (CQFIO/PhotographicImageSynthesis) saved its generators with TensorFlow 1's Saver: a
checkpoint is a prefix such as ``result_256p/model.ckpt`` with ``.index`` (a LevelDB-style sorted
table of tensor names -> BundleEntryProto: dtype, shape, shard, offset, size) and
``.data-00000-of-00001`` (the tensors' raw little-endian bytes). Both formats are public; this module
reads them with numpy alone, so importing needs no TensorFlow.

Variables: refinement module i at height h is ``g_<h>_conv1`` and ``g_<h>_conv2`` (``weights`` HWIO,
no bias; ``LayerNorm/gamma`` and ``LayerNorm/beta``), the output layer ``g_<H>_conv100`` (``weights``
1x1xWx3k, ``biases``); Adam's slots and ``beta1_power``/``beta2_power`` are ignored. With k outputs
the release lays image u out as channels (u, k+u, 2k+u); the project as 3u..3u+2, so the output
layer's channels are permuted on import.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import torch

from crn_repro.errors import CrnError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_BYTES = 48
# TensorFlow's DataType enum (types.proto) -> how the bytes are stored; DT_BFLOAT16 (14) is stored as the upper
# 16 bits of a float32 and decoded to float32 (``_decode``); DT_UINT16 (17) is an integer.
DT_BFLOAT16 = 14
DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?", DT_BFLOAT16: "<u2", 17: "<u2",
          19: "<f2"}
WHERE = ("the release's checkpoints: https://cqf.io/data/Tensorflow_models/result_<256p|512p|1024p|GTA>/"
         "model.ckpt.data-00000-of-00001 (and .meta); the .index files are in the release's repository")


# --- protobuf and table primitives (the wire formats, read by hand) ------------------------------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(message: bytes):
    """(field number, wire type, value) of a protobuf message; value: int for varint/fixed, bytes for length-delimited."""
    pos = 0
    while pos < len(message):
        key, pos = _varint(message, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(message, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", message, pos)[0], pos + 8
        elif wire == 2:
            length, pos = _varint(message, pos)
            value, pos = message[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = struct.unpack_from("<I", message, pos)[0], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _block_entries(block: bytes):
    """(key, value) of one table block (prefix-compressed keys, restart array at the end)."""
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * num_restarts
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + length]
        pos += length


def _read_block(data: bytes, handle: bytes) -> bytes:
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    if offset + size + 5 > len(data):
        raise ValueError("block beyond the end of the file")
    if data[offset + size] != 0:  # the trailer's compression byte: TensorFlow writes bundles uncompressed
        raise ValueError(f"compressed table block (type {data[offset + size]})")
    return data[offset : offset + size]


def _entry(message: bytes) -> dict:
    entry = {"dtype": 0, "shape": [], "shard_id": 0, "offset": 0, "size": 0, "slices": False}
    for number, _, value in _fields(message):
        if number == 1:
            entry["dtype"] = value
        elif number == 2:
            for dim_number, _, dim in _fields(value):
                if dim_number == 2:
                    entry["shape"].append(next((v for n, _, v in _fields(dim) if n == 1), 0))
        elif number in (3, 4, 5):
            entry[{3: "shard_id", 4: "offset", 5: "size"}[number]] = value
        elif number == 7:
            entry["slices"] = True
    return entry


def read_checkpoint_index(prefix: Path) -> tuple[int, dict[str, dict]]:
    """(number of data shards, tensor name -> entry) of a TensorFlow V2 checkpoint's ``.index``."""
    path = Path(f"{prefix}.index")
    if not path.is_file():
        raise CrnError(f"{path}: checkpoint index not found; give the checkpoint's prefix (e.g. result_256p/model.ckpt); {WHERE}")
    data = path.read_bytes()
    try:
        if len(data) < FOOTER_BYTES or struct.unpack_from("<Q", data, len(data) - 8)[0] != TABLE_MAGIC:
            raise ValueError("no table footer")
        footer = data[-FOOTER_BYTES:]
        _, pos = _varint(footer, 0)
        _, pos = _varint(footer, pos)  # the metaindex handle (unused)
        index_block = _read_block(data, footer[pos:])
        shards, entries = 1, {}
        for _, handle in _block_entries(index_block):
            for key, value in _block_entries(_read_block(data, handle)):
                name = key.decode("utf-8")
                if name == "":  # BundleHeaderProto
                    shards = next((v for n, _, v in _fields(value) if n == 1), 1)
                else:
                    entries[name] = _entry(value)
    except (ValueError, struct.error, UnicodeDecodeError) as error:
        raise CrnError(f"{path}: not a TensorFlow checkpoint index ({error}); {WHERE}") from None
    return shards, entries


def read_checkpoint(prefix: Path, names=None) -> dict[str, np.ndarray]:
    """The tensors of a TensorFlow V2 checkpoint (all, or those in ``names``) as numpy arrays."""
    shards, entries = read_checkpoint_index(prefix)
    wanted = entries if names is None else {n: entries[n] for n in names if n in entries}
    files: dict[int, np.ndarray] = {}
    out = {}
    for name, entry in wanted.items():
        if entry["slices"] or entry["dtype"] not in DTYPES:
            raise CrnError(f"{prefix}.index: tensor {name} is sliced or of unsupported dtype {entry['dtype']}")
        shard = entry["shard_id"]
        if shard not in files:
            path = Path(f"{prefix}.data-{shard:05d}-of-{shards:05d}")
            if not path.is_file():
                raise CrnError(f"{path}: checkpoint data not found (the weights, downloaded separately); {WHERE}")
            files[shard] = np.memmap(path, dtype=np.uint8, mode="r")
        blob = files[shard]
        dtype = np.dtype(DTYPES[entry["dtype"]])
        count = int(np.prod(entry["shape"], dtype=np.int64)) if entry["shape"] else 1
        if entry["size"] != count * dtype.itemsize or entry["offset"] + entry["size"] > len(blob):
            raise CrnError(f"{prefix}.data-{shard:05d}-of-{shards:05d}: tensor {name} lies beyond the file (truncated "
                           f"download?); download it again")
        raw = np.frombuffer(blob, dtype=dtype, count=count, offset=entry["offset"]).reshape(entry["shape"])
        out[name] = _decode(raw, entry["dtype"])
    return out


def _decode(raw: np.ndarray, tf_dtype: int) -> np.ndarray:
    """A tensor's stored values as numbers: bfloat16 (the top half of a float32's bits) widened exactly to
    float32, every other dtype as stored (a copy, off the memory-mapped file)."""
    if tf_dtype == DT_BFLOAT16:
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.copy()


# --- the release's CRN ------------------------------------------------------------------------------


MODULE_RE = re.compile(r"g_(\d+)_conv([12])/weights")
OUTPUT_RE = re.compile(r"g_(\d+)_conv100/weights")


def release_layout(entries: dict[str, dict]) -> dict:
    """The architecture a release checkpoint holds, from its shapes: heights, widths, classes, k."""
    heights = sorted({int(m.group(1)) for name in entries if (m := MODULE_RE.fullmatch(name))})
    outputs = [int(m.group(1)) for name in entries if (m := OUTPUT_RE.fullmatch(name))]
    if not heights or len(outputs) != 1:
        raise CrnError("not a CRN checkpoint of the release: no g_<h>_conv1/weights or not exactly one g_<h>_conv100")
    if heights != [4 * 2**i for i in range(len(heights))] or outputs[0] != heights[-1]:
        raise CrnError(f"release checkpoint: module heights {heights} are not 4, 8, 16, ... ending at the output layer")
    first = entries[f"g_{heights[0]}_conv1/weights"]["shape"]
    widths = [entries[f"g_{h}_conv1/weights"]["shape"][3] for h in heights]
    out_channels = entries[f"g_{outputs[0]}_conv100/weights"]["shape"][3]
    if out_channels % 3:
        raise CrnError(f"release checkpoint: the output layer has {out_channels} channels, not 3k")
    return {"heights": heights, "widths": widths, "num_classes": first[2], "num_outputs": out_channels // 3}


def release_state_dict(tensors: dict[str, np.ndarray], layout: dict) -> dict[str, torch.Tensor]:
    """The release's tensors renamed and laid out for :class:`crn_repro.crn.CRN` (HWIO -> OIHW; the
    k outputs' channels from (u, k+u, 2k+u) to 3u..3u+2)."""
    state = {}
    for i, h in enumerate(layout["heights"]):
        for j in (1, 2):
            scope = f"g_{h}_conv{j}"
            state[f"cascade.{i}.conv{j}.weight"] = torch.from_numpy(tensors[f"{scope}/weights"].transpose(3, 2, 0, 1).copy())
            state[f"cascade.{i}.norm{j}.weight"] = torch.from_numpy(tensors[f"{scope}/LayerNorm/gamma"].copy())
            state[f"cascade.{i}.norm{j}.bias"] = torch.from_numpy(tensors[f"{scope}/LayerNorm/beta"].copy())
    k = layout["num_outputs"]
    order = [c * k + u for u in range(k) for c in range(3)]  # ours 3u + c <- release c k + u
    scope = f"g_{layout['heights'][-1]}_conv100"
    weight = tensors[f"{scope}/weights"].transpose(3, 2, 0, 1)[order]
    state["to_rgb.weight"] = torch.from_numpy(weight.copy())
    state["to_rgb.bias"] = torch.from_numpy(tensors[f"{scope}/biases"][order].copy())
    return {name: t.float() for name, t in state.items()}


def release_variable_names(heights: list[int]) -> list[str]:
    """Every generator variable a release checkpoint holds for these module heights."""
    names = []
    for h in heights:
        for j in (1, 2):
            names += [f"g_{h}_conv{j}/weights", f"g_{h}_conv{j}/LayerNorm/gamma", f"g_{h}_conv{j}/LayerNorm/beta"]
    return names + [f"g_{heights[-1]}_conv100/weights", f"g_{heights[-1]}_conv100/biases"]


def import_release(prefix: Path, out: Path, model: str | None = None) -> dict:
    """Write the release checkpoint ``prefix`` as this project's model file ``out`` (model ``crn`` for
    one output, ``crn-diverse`` for k > 1, unless ``model`` says otherwise). Returns its facts."""
    from crn_repro.checkpoint import save_model_file
    from crn_repro.crn import CRN

    _, entries = read_checkpoint_index(Path(prefix))
    layout = release_layout(entries)
    tensors = read_checkpoint(Path(prefix), release_variable_names(layout["heights"]))
    missing = sorted(set(release_variable_names(layout["heights"])) - set(tensors))
    if missing:
        raise CrnError(f"{prefix}.index: no {missing[0]} ({len(missing)} generator variables missing); not a release CRN checkpoint")
    kwargs = {"num_classes": layout["num_classes"], "widths": layout["widths"], "num_outputs": layout["num_outputs"]}
    net = CRN(**kwargs)
    try:
        net.load_state_dict(release_state_dict(tensors, layout))
    except RuntimeError as error:
        raise CrnError(f"{prefix}: the release's tensors do not fit a CRN ({str(error).splitlines()[0]})") from None
    model = model or ("crn" if layout["num_outputs"] == 1 else "crn-diverse")
    h = layout["heights"][-1]
    facts = {
        "model": model, "source": "authors' release (TensorFlow checkpoint, imported)", "checkpoint": str(prefix),
        "image_size_hw": [h, 2 * h], "num_classes": layout["num_classes"], "precision": "fp32",
        "parameters": {"G": sum(p.numel() for p in net.parameters())},
    }
    save_model_file(Path(out), model, {"G": kwargs}, {"G": net}, facts)
    return facts
