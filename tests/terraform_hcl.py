"""Read Terraform (HCL2) files into plain blocks for the deployment tests.

Two readers return the same structure. ``read_with_hcl2`` uses the
python-hcl2 package. ``read_with_scanner`` needs no dependency: it masks
comments and string contents, so that braces and ``=`` inside them are not
mistaken for syntax, then splits blocks and attributes with regular
expressions on the masked text. The scanner covers the syntax used under
terraform/: blocks with quoted labels, one attribute per line, multi-line
objects, lists and calls, ``#``, ``//`` and ``/* */`` comments, and strings
with ``${...}`` templates.
NOTE: the scanner does not read heredoc strings (<<EOF).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Block", "Expr", "hcl2_available", "read_with_hcl2", "read_with_scanner", "read_dir"]


@dataclass(frozen=True)
class Expr:
    """An expression that is not a literal, such as ``var.namespace`` or ``merge(...)``."""

    text: str


@dataclass
class Block:
    """One HCL block: its type, labels, attributes and nested blocks."""

    type: str
    labels: tuple[str, ...]
    attributes: dict[str, Any] = field(default_factory=dict)
    blocks: list["Block"] = field(default_factory=list)

    def find(self, block_type: str, *labels: str) -> list["Block"]:
        """Return the nested blocks of ``block_type`` whose labels start with ``labels``."""
        return [b for b in self.blocks if b.type == block_type and b.labels[: len(labels)] == labels]

    def one(self, block_type: str, *labels: str) -> "Block":
        """Return the only nested block of ``block_type`` with ``labels``, or raise AssertionError."""
        found = self.find(block_type, *labels)
        assert len(found) == 1, f"expected one {block_type} {labels} block in {self.type} {self.labels}, found {len(found)}"
        return found[0]


def hcl2_available() -> bool:
    try:
        import hcl2  # noqa: F401
    except ImportError:
        return False
    return True


def read_dir(directory: Path, reader: Any) -> Block:
    """Read every .tf file of ``directory`` into one root block (type ``root``)."""
    root = Block("root", ())
    for path in sorted(directory.glob("*.tf")):
        root.blocks.extend(reader(path).blocks)
    return root


# python-hcl2 ------------------------------------------------------------------


def _unquote(text: str) -> str:
    """Turn an HCL quoted string literal into its value."""
    return json.loads(text) if text.startswith('"') else text


def _hcl2_key(key: str) -> str:
    # python-hcl2 writes a computed object key, (var.key), as ${(var.key)}.
    if key.startswith("${") and key.endswith("}"):
        return key[2:-1]
    return _unquote(key)


def _hcl2_value(value: Any) -> Any:
    if isinstance(value, str):
        if value.startswith("${") and value.endswith("}"):
            return Expr(value[2:-1])
        if len(value) >= 2 and value.startswith('"') and value.endswith('"') and "${" not in value:
            return _unquote(value)
        # Type constraints (string, map(string)) and templates keep their text.
        return Expr(value)
    if isinstance(value, list):
        return [_hcl2_value(item) for item in value]
    if isinstance(value, dict):
        return {_hcl2_key(key): _hcl2_value(item) for key, item in value.items() if not key.startswith("__")}
    return value


def _hcl2_block(block_type: str, labels: tuple[str, ...], body: dict[str, Any]) -> Block:
    block = Block(block_type, labels)
    for key, value in body.items():
        if key.startswith("__"):
            continue
        _hcl2_member(block, key, value)
    return block


def _is_hcl2_block(value: Any) -> bool:
    return isinstance(value, dict) and value.get("__is_block__") is True


def _hcl2_member(parent: Block, key: str, value: Any) -> None:
    # python-hcl2 8.x returns a block as a list of bodies, one per occurrence,
    # and a labelled block nests one dict level per label.
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        if all(_is_hcl2_block(item) or _has_labels(item) for item in value):
            for item in value:
                parent.blocks.extend(_hcl2_labelled(key, (), item))
            return
    parent.attributes[key] = _hcl2_value(value)


def _has_labels(body: dict[str, Any]) -> bool:
    keys = [key for key in body if not key.startswith("__")]
    return bool(keys) and all(key.startswith('"') for key in keys)


def _hcl2_labelled(block_type: str, labels: tuple[str, ...], body: dict[str, Any]) -> list[Block]:
    if _is_hcl2_block(body) and not _has_labels(body):
        return [_hcl2_block(block_type, labels, body)]
    blocks: list[Block] = []
    for key, inner in body.items():
        if key.startswith("__"):
            continue
        blocks.extend(_hcl2_labelled(block_type, (*labels, _unquote(key)), inner))
    return blocks


def read_with_hcl2(path: Path) -> Block:
    """Read one .tf file with python-hcl2."""
    import hcl2

    with path.open(encoding="utf-8") as handle:
        document = hcl2.load(handle)
    return _hcl2_block("root", (), document)


# Scanner ----------------------------------------------------------------------

_BLOCK_HEAD = re.compile(r'([A-Za-z_][\w-]*)((?:[ \t]+"[^"\n]*")*)[ \t]*\{')
# Attribute names: identifiers, and in object expressions also quoted strings
# and parenthesized expressions, such as "app.kubernetes.io/name" or (var.key).
_ATTRIBUTE_HEAD = re.compile(r'\s*("_*"|\([^()\n]*\)|[A-Za-z_][\w-]*)\s*=(?!=)')
_OPENING = "([{"
_CLOSING = ")]}"


def _mask(text: str) -> str:
    """Return ``text`` with comments blanked and string contents replaced by '_'.

    Quotes stay in place and the length is unchanged, so positions in the
    masked text are positions in the original.
    """
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "#" or text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end == -1 else end
            out[i:end] = " " * (end - i)
            i = end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end == -1 else end + 2
            out[i:end] = [c if c == "\n" else " " for c in text[i:end]]
            i = end
        elif ch == '"':
            end = _string_end(text, i)
            out[i + 1 : end - 1] = "_" * (end - i - 2)
            i = end
        else:
            i += 1
    return "".join(out)


def _string_end(text: str, start: int) -> int:
    """Return the index after the closing quote of the string opened at ``start``."""
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
        elif ch == '"':
            return i + 1
        elif text.startswith("${", i) or text.startswith("%{", i):
            i = _template_end(text, i + 2)
        else:
            i += 1
    raise ValueError(f"unterminated string starting at offset {start}")


def _template_end(text: str, start: int) -> int:
    """Return the index after the '}' that closes a ${...} opened before ``start``."""
    depth = 1
    i = start
    while i < len(text):
        ch = text[i]
        if ch == '"':
            i = _string_end(text, i)
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError(f"unterminated template starting at offset {start}")


def _matching_close(masked: str, open_index: int) -> int:
    """Return the index of the bracket that closes the one at ``open_index``."""
    depth = 0
    for i in range(open_index, len(masked)):
        if masked[i] in _OPENING:
            depth += 1
        elif masked[i] in _CLOSING:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced bracket at offset {open_index}")


def _value_end(masked: str, start: int, terminators: str) -> int:
    """Return the end of the expression that starts at ``start``: the first terminator outside brackets."""
    depth = 0
    i = start
    while i < len(masked):
        ch = masked[i]
        if ch in _OPENING:
            depth += 1
        elif ch in _CLOSING:
            depth -= 1
        elif ch in terminators and depth == 0:
            return i
        i += 1
    return i


def _split_top_level(text: str, masked: str, separator: str) -> list[tuple[str, str]]:
    """Split ``text`` at ``separator`` characters outside brackets into (text, masked) pairs."""
    parts: list[tuple[str, str]] = []
    depth, start = 0, 0
    for i, ch in enumerate(masked):
        if ch in _OPENING:
            depth += 1
        elif ch in _CLOSING:
            depth -= 1
        elif ch in separator and depth == 0:
            parts.append((text[start:i], masked[start:i]))
            start = i + 1
    parts.append((text[start:], masked[start:]))
    return [(part.strip(), masked_part.strip()) for part, masked_part in parts if masked_part.strip()]


def _literal(text: str, masked: str) -> Any:
    """Parse a literal value, and return anything else as an Expr."""
    stripped, masked_stripped = text.strip(), masked.strip()
    if stripped in ("true", "false"):
        return stripped == "true"
    if stripped == "null":
        return None
    if re.fullmatch(r"-?\d+", stripped):
        return int(stripped)
    if re.fullmatch(r"-?\d+\.\d+", stripped):
        return float(stripped)
    if re.fullmatch(r'"_*"', masked_stripped) and "${" not in stripped:
        return _unquote(stripped)
    if masked_stripped.startswith("[") and _matching_close(masked_stripped, 0) == len(masked_stripped) - 1:
        inner, masked_inner = stripped[1:-1], masked_stripped[1:-1]
        return [_literal(item, masked_item) for item, masked_item in _split_top_level(inner, masked_inner, ",")]
    if masked_stripped.startswith("{") and _matching_close(masked_stripped, 0) == len(masked_stripped) - 1:
        inner, masked_inner = stripped[1:-1], masked_stripped[1:-1]
        body = Block("object", ())
        try:
            _scan_body(inner, masked_inner, body, in_object=True)
        except ValueError:
            return Expr(stripped)
        return body.attributes
    return Expr(stripped)


def _scan_body(text: str, masked: str, block: Block, in_object: bool = False) -> None:
    """Fill ``block`` with the attributes and nested blocks of a body or object expression.

    Raise ValueError on text that is neither. In an object expression a comma
    also ends a value, and nested blocks are not allowed.
    """
    terminators = "\n," if in_object else "\n"
    i = 0
    while i < len(masked):
        if masked[i] in " \t\r\n,":
            i += 1
            continue
        attribute = _ATTRIBUTE_HEAD.match(masked, i)
        if attribute:
            name = _unquote(text[attribute.start(1) : attribute.end(1)])
            start = attribute.end()
            end = _value_end(masked, start, terminators)
            block.attributes[name] = _literal(text[start:end], masked[start:end])
            i = end
            continue
        head = None if in_object else _BLOCK_HEAD.match(masked, i)
        if head:
            labels = tuple(_unquote(label) for label in re.findall(r'"[^"\n]*"', text[head.start(2) : head.end(2)]))
            close = _matching_close(masked, head.end() - 1)
            nested = Block(head.group(1), labels)
            _scan_body(text[head.end() : close], masked[head.end() : close], nested)
            block.blocks.append(nested)
            i = close + 1
            continue
        line_end = masked.find("\n", i)
        if line_end == -1:
            line_end = len(text)
        raise ValueError(f"unexpected text: {text[i:line_end]!r}")


def read_with_scanner(path: Path) -> Block:
    """Read one .tf file with the scanner."""
    text = path.read_text(encoding="utf-8")
    root = Block("root", ())
    _scan_body(text, _mask(text), root)
    return root
