"""OpenAI chat-completions rules: encodings, tool definitions as the model sees them.

Sources are cited at each rule.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


def _is_openai_name(name: str) -> bool:
    if name.startswith("gpt-oss"):
        return False
    return name.startswith(("gpt-", "o1", "o3", "o4", "chatgpt-", "computer-use", "ft:gpt",
                            "codex-"))


def _openai_encoding(name: str) -> str:
    if name.startswith(("gpt-3.5", "gpt-35")) or (
        name.startswith("gpt-4") and not name.startswith(("gpt-4o", "gpt-4.1", "gpt-4.5"))
    ):
        return "cl100k_base"
    return "o200k_base"


def _args(fn: Mapping[str, Any]) -> str:
    args = fn.get("arguments", fn.get("args", fn.get("input", "")))
    if isinstance(args, str):
        return args
    return json.dumps(args, separators=(",", ":"), ensure_ascii=False, default=str)


# -- tool definitions as the model sees them --------------------------------


def _as_function(tool: Any) -> dict[str, Any] | None:
    """``{name, description, parameters}`` from an OpenAI tool, a legacy function
    or an Anthropic tool; ``None`` for server tools (bash, computer use, ...)."""
    if not isinstance(tool, Mapping):
        name = getattr(tool, "name", None)
        if isinstance(name, str):
            schema = getattr(tool, "args_schema", None)
            params: Any = {}
            if schema is not None and hasattr(schema, "model_json_schema"):
                params = schema.model_json_schema()
            return {"name": name, "description": str(getattr(tool, "description", "") or ""),
                    "parameters": params}
        return {"name": str(tool), "description": "", "parameters": {}}
    if isinstance(tool.get("function"), Mapping):
        return dict(tool["function"])
    if "input_schema" in tool:
        return {"name": tool.get("name", ""), "description": tool.get("description", ""),
                "parameters": tool.get("input_schema")}
    if "parameters" in tool or ("name" in tool and tool.get("type") in (None, "function",
                                                                          "custom")):
        return {"name": tool.get("name", ""), "description": tool.get("description", ""),
                "parameters": tool.get("parameters") or {}}
    return None


def render_functions(functions: Sequence[Mapping[str, Any]]) -> str:
    """Function definitions in the TypeScript namespace OpenAI renders them as."""
    lines = ["namespace functions {", ""]
    for fn in functions:
        description = str(fn.get("description") or "")
        for line in description.splitlines() or ([description] if description else []):
            lines.append(f"// {line}")
        params = fn.get("parameters") or {}
        properties = params.get("properties") if isinstance(params, Mapping) else None
        name = fn.get("name", "")
        if properties:
            lines.append(f"type {name} = (_: {{")
            lines.append(_ts_object(params, 0))
            lines.append("}) => any;")
        else:
            lines.append(f"type {name} = () => any;")
        lines.append("")
    lines.append("} // namespace functions")
    return "\n".join(lines)


def _ts_object(schema: Mapping[str, Any], indent: int) -> str:
    properties = schema.get("properties") or {}
    required = schema.get("required") or ()
    pad = " " * indent
    lines: list[str] = []
    for key, value in properties.items():
        prop: Mapping[str, Any] = value if isinstance(value, Mapping) else {}
        description = prop.get("description")
        if description:
            lines.extend(f"{pad}// {line}" for line in str(description).splitlines())
        optional = "" if key in required else "?"
        lines.append(f"{pad}{key}{optional}: {_ts_type(prop, indent)},")
    return "\n".join(lines)


def _ts_type(prop: Mapping[str, Any], indent: int) -> str:
    if "enum" in prop:
        return " | ".join(json.dumps(v, ensure_ascii=False) for v in prop["enum"])
    if "const" in prop:
        return json.dumps(prop["const"], ensure_ascii=False)
    for union in ("anyOf", "oneOf"):
        if isinstance(prop.get(union), list):
            return " | ".join(_ts_type(p, indent) for p in prop[union] if isinstance(p, Mapping))
    kind = prop.get("type")
    if isinstance(kind, list):
        return " | ".join(_ts_type({**prop, "type": k}, indent) for k in kind)
    if kind == "string":
        return "string"
    if kind in ("integer", "number"):
        return "number"
    if kind == "boolean":
        return "boolean"
    if kind == "null":
        return "null"
    if kind == "array":
        items = prop.get("items")
        return f"{_ts_type(items, indent) if isinstance(items, Mapping) else 'any'}[]"
    if kind == "object" or "properties" in prop:
        if not prop.get("properties"):
            return "object"
        return "{\n" + _ts_object(prop, indent + 2) + "\n" + " " * indent + "}"
    return "any"
