"""What a policy expression constrains, read from the parse tree Postgres stores for it.

``pg_policy.polqual`` and ``polwithcheck`` hold the expression as a node tree (``pg_node_tree``,
text like ``{OPEXPR :opno 98 :args ({VAR :varno 1 ...} {CONST ...})}``), the form Postgres itself
evaluates. Judging that tree, not the deparsed SQL or the names in it, tells whether an expression
looks at the row at all and whether it pins the tenant column to one per-request value.

In a policy expression the policy's table is range-table entry 1; inside a subquery nested ``d``
levels deep, a ``VAR`` refers to that table when its ``varlevelsup`` equals ``d``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Node:
    """One ``{TYPE :field value ...}`` of a node tree."""

    type: str
    fields: dict[str, object] = field(default_factory=dict)

    def get(self, name: str) -> object:
        return self.fields.get(name)


class NodeTreeError(ValueError):
    """The text is not a node tree this reader understands."""


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "{}()[]":
            out.append(c)
            i += 1
        else:
            start = i
            chars = []
            while i < n and not text[i].isspace() and text[i] not in "{}()[]":
                if text[i] == "\\" and i + 1 < n:  # outToken escapes special characters
                    i += 1
                chars.append(text[i])
                i += 1
            if i == start:
                raise NodeTreeError(f"unexpected character at {i}")
            out.append("".join(chars))
    return out


def parse_node_tree(text: str) -> object:
    """The node tree as ``Node``s, lists and token strings (``<>`` is ``None``)."""
    tokens = _tokens(text)
    pos = 0

    def value() -> object:
        nonlocal pos
        if pos >= len(tokens):
            raise NodeTreeError("truncated node tree")
        tok = tokens[pos]
        pos += 1
        if tok == "{":
            node = Node(tokens[pos])
            pos += 1
            while tokens[pos] != "}":
                name = tokens[pos]
                if not name.startswith(":"):
                    raise NodeTreeError(f"expected a field name, got {name!r}")
                pos += 1
                parts = []
                while tokens[pos] != "}" and not tokens[pos].startswith(":"):
                    parts.append(value())
                node.fields[name[1:]] = parts[0] if len(parts) == 1 else parts
            pos += 1
            return node
        if tok in ("(", "["):
            close = ")" if tok == "(" else "]"
            items = []
            while tokens[pos] != close:
                items.append(value())
            pos += 1
            return items
        return None if tok == "<>" else tok

    try:
        tree = value()
    except IndexError as exc:
        raise NodeTreeError("truncated node tree") from exc
    return tree


def _children(value: object) -> list[object]:
    if isinstance(value, Node):
        return list(value.fields.values())
    if isinstance(value, list):
        return value
    return []


def row_columns(tree: object, depth: int = 0) -> set[int]:
    """Attribute numbers of the policy's own row the expression reads (0: the whole row)."""
    found: set[int] = set()
    if isinstance(tree, Node):
        if tree.type == "VAR" and str(tree.get("varlevelsup")) == str(depth):
            found.add(int(str(tree.get("varattno"))))
            return found
        inner = depth + 1 if tree.type == "QUERY" else depth
        for child in _children(tree):
            found |= row_columns(child, inner)
    elif isinstance(tree, list):
        for child in tree:
            found |= row_columns(child, depth)
    return found


def conjuncts(tree: object) -> list[object]:
    """The top-level ANDed parts of an expression (the expression itself if it is no AND)."""
    if isinstance(tree, Node) and tree.type == "BOOLEXPR" and tree.get("boolop") == "and":
        args = tree.get("args")
        args = args if isinstance(args, list) else [args]
        return [part for arg in args for part in conjuncts(arg)]
    return [tree]


@dataclass(frozen=True)
class TenantComparison:
    """A conjunct ``<tenant column> <operator> <value that ignores the row>``."""

    operator: int
    any_of_array: bool


def tenant_comparisons(tree: object, tenant_attnum: int) -> list[TenantComparison]:
    """Conjuncts comparing the tenant column with a value that does not depend on the row.

    ``tenant_id = (SELECT f())`` and ``tenant_id = ANY (...)`` both qualify; whether the operator
    is equality is for the caller to look up (``pg_operator``), not for a name to tell.
    """
    found = []
    for part in conjuncts(tree):
        if isinstance(part, Node) and part.type == "SUBLINK":
            found += _sublink_comparison(part, tenant_attnum)
            continue
        if not isinstance(part, Node) or part.type not in ("OPEXPR", "SCALARARRAYOPEXPR"):
            continue
        args = part.get("args")
        if not isinstance(args, list) or len(args) != 2:
            continue
        if part.type == "SCALARARRAYOPEXPR" and part.get("useOr") != "true":
            continue
        column, other = args
        column = _strip_relabel(column)
        if part.type == "OPEXPR" and not _is_row_var(column, tenant_attnum):
            column, other = _strip_relabel(other), args[0]
        if _is_row_var(column, tenant_attnum) and not row_columns(other):
            found.append(TenantComparison(int(str(part.get("opno"))), part.type != "OPEXPR"))
    return found


def _sublink_comparison(part: Node, tenant_attnum: int) -> list[TenantComparison]:
    # tenant_id IN (SELECT ...): an ANY sublink (type 2) whose test compares the column with the
    # subquery's output, and whose subquery does not look at the row.
    test = part.get("testexpr")
    if str(part.get("subLinkType")) != "2" or not isinstance(test, Node) or test.type != "OPEXPR":
        return []
    args = test.get("args")
    if not isinstance(args, list) or len(args) != 2 or row_columns(part.get("subselect")):
        return []
    if not _is_row_var(_strip_relabel(args[0]), tenant_attnum):
        return []
    return [TenantComparison(int(str(test.get("opno"))), True)]


def _strip_relabel(value: object) -> object:
    # A binary-compatible cast (text <-> varchar) wraps the column in a RELABELTYPE.
    while isinstance(value, Node) and value.type == "RELABELTYPE":
        value = value.get("arg")
    return value


def _is_row_var(value: object, attnum: int) -> bool:
    return (
        isinstance(value, Node)
        and value.type == "VAR"
        and str(value.get("varlevelsup")) == "0"
        and str(value.get("varattno")) == str(attnum)
    )
