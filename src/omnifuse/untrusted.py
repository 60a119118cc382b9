"""The one boundary for files a user hands omnifuse: recipes, data, media, run-directory files, weights.

Every reader here turns the ways such a file can be wrong — missing, a folder, too large, not UTF-8,
not YAML / JSON, nested too deeply, a key given twice, an image header promising billions of pixels —
into an :class:`~omnifuse.errors.OmnifuseError` that names the file and what to do, so that the CLI's
"internal error" is left for real bugs. It imports nothing of omnifuse but the error type.
"""

from __future__ import annotations

import codecs
import json
import math
import warnings
from pathlib import Path
from typing import Any

import yaml
from PIL import Image, UnidentifiedImageError

from omnifuse.errors import OmnifuseError

MAX_TEXT_BYTES = 512 * 1024**2  # a recipe or a run file larger than this is refused
MAX_DATA_BYTES = 4 * 1024**3  # a data file over this is refused (JSONL, LLaVA JSON: LLaVA-1.5's mix is 1 GB)
MAX_DEPTH = 64  # nesting of YAML / JSON containers; real recipes and samples use fewer than 10
MAX_PIXELS = 40_000_000  # width × height of one image, checked from the header before decoding

# Byte-order marks that identify text encodings other than UTF-8 (Windows editors and PowerShell's `>`
# write UTF-16 with one). Longest first: the UTF-32 LE mark begins with the UTF-16 LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


class ImageTooLarge(OmnifuseError):
    """An image whose header declares more pixels than the limit (a decompression bomb, or just huge)."""


def _require_file(path: Path, what: str) -> None:
    if path.is_dir():
        raise OmnifuseError(f"{what} {path} is a folder, not a file; give the path of the file itself")
    if not path.is_file():
        raise OmnifuseError(f"{what} {path} does not exist; check the path (relative to {Path.cwd()})")


def read_bytes(path: Path | str, what: str = "file", limit: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of a user file, refusing folders, missing files, unreadable files and files over ``limit``."""
    path = Path(path)
    _require_file(path, what)
    try:
        size = path.stat().st_size
        if size > limit:
            raise OmnifuseError(
                f"{what} {path} is {size / 1024**2:.0f} MiB, over the limit of {limit / 1024**2:.0f} MiB"
            )
        return path.read_bytes()
    except PermissionError:
        raise OmnifuseError(
            f"{what} {path} cannot be read (permission denied); check its permissions"
        ) from None
    except OSError as exc:
        raise OmnifuseError(f"{what} {path} cannot be read ({exc.strerror or exc})") from None


def decode_text(raw: bytes, source: str) -> str:
    """UTF-8 text (a byte-order mark of UTF-8, UTF-16 or UTF-32 is honoured); anything else is an error
    naming the byte offset."""
    encoding = next((enc for bom, enc in _BOMS if raw.startswith(bom)), "utf-8")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        if encoding == "utf-8" and 0 in raw:
            raise _nul_bytes(raw, source) from None
        raise OmnifuseError(
            f"{source} is not {encoding.upper().removesuffix('-SIG')} text ({exc.reason} at byte {exc.start}); "
            "save it as UTF-8"
        ) from None
    if "\x00" in text:  # valid UTF-8, but no text file holds NUL: UTF-16 without its mark, or binary
        raise _nul_bytes(raw, source)
    return text


def _nul_bytes(raw: bytes, source: str) -> OmnifuseError:
    return OmnifuseError(
        f"{source} holds NUL bytes (from byte {raw.index(0)}): it is UTF-16/32 text without a byte-order "
        "mark, or not a text file at all; save it as UTF-8"
    )


def read_text(path: Path | str, what: str = "file", limit: int = MAX_TEXT_BYTES) -> str:
    return decode_text(read_bytes(path, what, limit), f"{what} {path}")


# ------------------------------------------------------------------ YAML
class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (plain PyYAML keeps the last one
    silently, so ``stages:`` written twice would drop the first list without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:  # before merge keys (<<) are flattened: an override is not a repeat
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key (a list as a key): SafeLoader reports it itself
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"the key {key!r} is given twice (first on line {first}); keep one",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _check_depth(node: yaml.Node, source: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH and alias expansions ("billion laughs") before constructing."""
    stack, visited = [(node, 1)], 0
    while stack:
        current, depth = stack.pop()
        visited += 1
        if depth > MAX_DEPTH:
            raise OmnifuseError(f"{source} is nested more than {MAX_DEPTH} levels deep; flatten it")
        if visited > 1_000_000:
            raise OmnifuseError(
                f"{source} expands to more than a million values (aliases of aliases?); simplify it"
            )
        if isinstance(current, yaml.MappingNode):
            stack.extend((n, depth + 1) for pair in current.value for n in pair)
        elif isinstance(current, yaml.SequenceNode):
            stack.extend((n, depth + 1) for n in current.value)


def parse_yaml(text: str, source: str) -> Any:
    """YAML text → Python data (safe types only), with duplicate keys and deep nesting refused."""
    try:
        loader = _StrictLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_depth(node, source)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise OmnifuseError(f"{source} is not valid YAML: {exc}") from None
    except RecursionError:
        raise OmnifuseError(f"{source} is nested too deeply to read; flatten it") from None


def read_yaml(path: Path | str, what: str = "file") -> Any:
    return parse_yaml(read_text(path, what), f"{what} {path}")


# ------------------------------------------------------------------ JSON
def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: str, source: str) -> Any:
    """Strict JSON (no NaN / Infinity); nesting deeper than the interpreter's recursion limit is an error
    (json's C scanner raises RecursionError there rather than crashing)."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise OmnifuseError(
            f"{source} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise OmnifuseError(f"{source} is nested too deeply to read; flatten it") from None
    except ValueError as exc:  # NaN / Infinity, over-long integer literals
        raise OmnifuseError(f"{source} is not valid JSON ({exc})") from None


def read_json(path: Path | str, what: str = "file") -> Any:
    return parse_json(read_text(path, what), f"{what} {path}")


def _is(value: Any, kind: type) -> bool:
    if kind is float:  # JSON has one number type; bool is no number here
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _describe(schema: Any) -> str:
    if isinstance(schema, type):
        names = {
            dict: "an object",
            list: "a list",
            float: "a finite number",
            int: "an integer",
            str: "a string",
        }
        return names.get(schema, "true or false" if schema is bool else schema.__name__)
    if isinstance(schema, dict):
        return "an object"
    if isinstance(schema, tuple):
        return " or ".join(_describe(s) for s in schema)
    if len(schema) > 1:
        return f"a list of {len(schema)} values"
    return f"a list of {_describe(schema[0])}"


def _child(at: str, key: Any) -> str:
    return f"{at}[{key}]" if isinstance(key, int) else f"{at}.{key}" if at else str(key)


def _mismatch(value: Any, schema: Any, at: str) -> str | None:
    """Where ``value`` departs from ``schema`` (None when it conforms). A schema is a type (float: a finite
    number, int: an integer, neither a bool), a tuple of alternatives, ``[item]`` (a list of such items),
    ``[a, b]`` (a list of exactly these), or ``{key: schema}`` (an object holding those keys; ``"key?"``
    may be absent, ``"*"`` is every other key's value)."""
    label = at or "the content"
    if isinstance(schema, tuple):
        if any(_mismatch(value, s, at) is None for s in schema):
            return None
        return f"{label} is {_shown(value)}, not {_describe(schema)}"
    if isinstance(schema, type) or not isinstance(value, list | dict):
        ok = isinstance(schema, type) and _is(value, schema)
        return None if ok else f"{label} is {_shown(value)}, not {_describe(schema)}"
    if isinstance(schema, list):
        if not isinstance(value, list):
            return f"{label} is {_shown(value)}, not {_describe(schema)}"
        if len(schema) > 1 and len(value) != len(schema):
            return f"{label} holds {len(value)} values, not {len(schema)}"
        items = schema if len(schema) > 1 else schema * len(value)
        return next((p for i, v in enumerate(value) if (p := _mismatch(v, items[i], _child(at, i)))), None)
    if not isinstance(value, dict):
        return f"{label} is {_shown(value)}, not an object"
    named = {key.removesuffix("?"): key for key in schema if key != "*"}
    for name, key in named.items():
        if name not in value:
            if key.endswith("?"):
                continue
            return f"{_child(at, name)} is missing"
        if problem := _mismatch(value[name], schema[key], _child(at, name)):
            return problem
    if "*" in schema:
        for name, item in value.items():
            if name not in named and (problem := _mismatch(item, schema["*"], _child(at, name))):
                return problem
    return None


def check_json(value: Any, source: str, schema: Any) -> Any:
    """``value`` (decoded JSON) checked against ``schema`` (see :func:`_mismatch`); a damaged or hand-edited
    file fails here, naming the file and the first value that is wrong, not deep inside a verb."""
    if problem := _mismatch(value, schema, ""):
        raise OmnifuseError(f"{source}: {problem}; the file is damaged")
    return value


def json_fields(value: Any, source: str, fields: dict[str, Any]) -> dict:
    """``value`` checked to be a JSON object holding each of ``fields`` with its type (int, float — finite —,
    str, bool, list, dict) or nested schema (see :func:`_mismatch`; ``"key?"`` for an optional key)."""
    if not isinstance(value, dict):
        raise OmnifuseError(f"{source} must hold a JSON object, not {type(value).__name__}")
    for key in fields:
        if key.removesuffix("?") not in value and not key.endswith("?"):
            raise OmnifuseError(f"{source} has no {key!r}; the file is damaged")
    return check_json(value, source, fields)


def check_safetensors(path: Path | str, what: str = "weights file") -> dict[str, Any]:
    """The JSON header of a safetensors file, checked without loading a tensor: an empty or truncated
    file, a text file renamed ``.safetensors`` or a header whose tensors do not fit the file are refused
    (safetensors itself raises several exception types, some of them not even ``Exception``'s)."""
    path = Path(path)
    _require_file(path, what)
    size = path.stat().st_size
    hint = "it is damaged, or not a safetensors file; save the weights again with safetensors"
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if length < 2 or length > min(size - 8, 100 * 1024**2):
                raise OmnifuseError(
                    f"{what} {path} has no safetensors header ({size} bytes{', empty' if size == 0 else ''}); "
                    + hint
                )
            raw = fh.read(length)
    except OSError as exc:
        raise OmnifuseError(f"{what} {path} cannot be read ({exc.strerror or exc})") from None
    header = parse_json(decode_text(raw, f"the header of {what} {path}"), f"the header of {what} {path}")
    if not isinstance(header, dict):
        raise OmnifuseError(f"{what} {path} has a header that is no JSON object; {hint}")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is(o, int) for o in offsets)):
            raise OmnifuseError(f"{what} {path}: the entry of tensor {name!r} is damaged; {hint}")
        end = max(end, offsets[1])
    if 8 + length + end > size:
        raise OmnifuseError(
            f"{what} {path} is truncated ({size} bytes; its header needs {8 + length + end}); {hint}"
        )
    return header


# ------------------------------------------------------------------ images
def open_image(
    source: Path | str | Image.Image, what: str = "image", max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """An image file (or an already decoded image) as RGB. The pixel count is read from the header and
    checked before any pixel is decoded, so a 30000×30000 PNG of a few kilobytes costs nothing."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    path = Path(source)
    _require_file(path, what)
    try:
        with warnings.catch_warnings():
            # PIL warns from 89 M pixels and raises from 179 M; the limit here is lower and an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size  # from the header: nothing decoded yet
                if w <= 0 or h <= 0 or w * h > max_pixels:
                    raise ImageTooLarge(
                        f"{what} {path} is {w}×{h} pixels, over the limit of {max_pixels:,} pixels; "
                        "resize it (or check that the file is what you meant)"
                    )
                img.load()
                return img.convert("RGB")
    except OmnifuseError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(f"{what} {path} decompresses to too many pixels; resize it") from None
    except UnidentifiedImageError:
        raise OmnifuseError(
            f"{what} {path} is not a readable image (unknown or corrupt format); use a PNG or JPEG file"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or broken files
        raise OmnifuseError(f"{what} {path} is not a readable image ({exc}); replace the file") from None


# ------------------------------------------------------------------ output paths
def check_out_dir(path: Path | str, what: str = "--out") -> Path:
    """An output folder that is, or can become, a folder: not a file, not below a file. Checked before the
    work runs, so a long job does not fail at its last step."""
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                where = "is a file" if parent == path else f"lies below {parent}, which is a file"
                raise OmnifuseError(f"{what} {path} {where}; give a folder path")
            break
    return path


def check_out_file(path: Path | str, what: str = "--out") -> Path:
    """An output file path: not a folder, and its folder can be created."""
    path = Path(path)
    if path.is_dir():
        raise OmnifuseError(f"{what} {path} is a folder; give a file path")
    check_out_dir(path.parent, what)
    return path
