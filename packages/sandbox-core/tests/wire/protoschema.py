"""A tiny parser for the subset of proto3 that ``sandbox.proto`` uses, so tests can check
the hand-written codec against the schema text (and, through it, the protobuf runtime)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any


@dataclasses.dataclass
class ProtoField:
    name: str
    number: int
    type: str  # scalar name, enum or message name, or "map<string,string>"
    label: str = ""  # "", "repeated" or "optional"
    oneof: str | None = None


@dataclasses.dataclass
class ProtoMessage:
    name: str
    fields: list[ProtoField] = dataclasses.field(default_factory=list)
    reserved: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ProtoRpc:
    name: str
    request: str
    response: str
    client_streaming: bool
    server_streaming: bool


@dataclasses.dataclass
class ProtoFile:
    package: str
    messages: dict[str, ProtoMessage]
    enums: dict[str, dict[str, int]]
    services: dict[str, list[ProtoRpc]]


_FIELD = re.compile(
    r"^(?:(repeated|optional)\s+)?(map\s*<\s*string\s*,\s*string\s*>|[\w.]+)\s+(\w+)\s*=\s*(\d+)\s*;$"
)


_RPC = (
    r"rpc (\w+)\s*\(\s*(stream )?([\w.]+)\s*\)"
    r"\s*returns\s*\(\s*(stream )?([\w.]+)\s*\)"
)


def parse(text: str) -> ProtoFile:
    text = re.sub(r"//[^\n]*", "", text)
    flat = re.sub(r"\s+", " ", text)
    package = re.search(r"package ([\w.]+);", flat)
    assert package is not None
    messages: dict[str, ProtoMessage] = {}
    enums: dict[str, dict[str, int]] = {}
    services: dict[str, list[ProtoRpc]] = {}
    pos = 0
    block = re.compile(r"(message|enum|service) (\w+) \{")
    while True:
        m = block.search(flat, pos)
        if m is None:
            break
        body, pos = _balanced(flat, m.end())
        kind, name = m.group(1), m.group(2)
        if kind == "enum":
            enums[name] = {k: int(v) for k, v in re.findall(r"(\w+) = (\d+);", body)}
        elif kind == "service":
            rpcs = []
            for rpc in re.finditer(_RPC, body):
                rpcs.append(
                    ProtoRpc(
                        rpc.group(1),
                        rpc.group(3),
                        rpc.group(5),
                        bool(rpc.group(2)),
                        bool(rpc.group(4)),
                    )
                )
            services[name] = rpcs
        else:
            messages[name] = _parse_message(name, body)
    return ProtoFile(package.group(1), messages, enums, services)


def _balanced(text: str, start: int) -> tuple[str, int]:
    depth = 1
    i = start
    while depth:
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        i += 1
    return text[start : i - 1], i


def _parse_message(name: str, body: str) -> ProtoMessage:
    msg = ProtoMessage(name)
    pos = 0
    while pos < len(body):
        oneof = re.compile(r"\s*oneof (\w+) \{").match(body, pos)
        if oneof:
            inner, pos = _balanced(body, oneof.end())
            for raw in inner.split(";"):
                stmt = raw.strip()
                if stmt:
                    field = _field(stmt + ";")
                    field.oneof = oneof.group(1)
                    msg.fields.append(field)
            continue
        end = body.find(";", pos)
        if end < 0:
            break
        stmt = body[pos : end + 1].strip()
        pos = end + 1
        if stmt.startswith("reserved"):
            msg.reserved += [int(x) for x in re.findall(r"\d+", stmt)]
        elif stmt:
            msg.fields.append(_field(stmt))
    return msg


def _field(stmt: str) -> ProtoField:
    m = _FIELD.match(stmt.strip())
    assert m is not None, stmt
    type_ = re.sub(r"\s+", "", m.group(2))
    return ProtoField(m.group(3), int(m.group(4)), type_, m.group(1) or "")


_SCALARS = {
    "double": 1,
    "int64": 3,
    "uint64": 4,
    "int32": 5,
    "bool": 8,
    "string": 9,
    "bytes": 12,
    "uint32": 13,
}


def file_descriptor(proto: ProtoFile, filename: str = "sandbox/v2/sandbox.proto") -> Any:
    """A ``google.protobuf.descriptor_pb2.FileDescriptorProto`` for the parsed file."""
    from google.protobuf import descriptor_pb2

    fd = descriptor_pb2.FileDescriptorProto(name=filename, package=proto.package, syntax="proto3")
    for name, values in proto.enums.items():
        enum = fd.enum_type.add(name=name)
        for value_name, number in values.items():
            enum.value.add(name=value_name, number=number)
    F = descriptor_pb2.FieldDescriptorProto
    for msg in proto.messages.values():
        dp = fd.message_type.add(name=msg.name)
        oneof_index: dict[str, int] = {}
        for field in msg.fields:
            fp = dp.field.add(name=field.name, number=field.number, json_name=_camel(field.name))
            fp.label = F.LABEL_REPEATED if field.label == "repeated" else F.LABEL_OPTIONAL
            if field.type.startswith("map<"):
                entry_name = "".join(p.capitalize() for p in field.name.split("_")) + "Entry"
                entry = dp.nested_type.add(name=entry_name)
                entry.options.map_entry = True
                entry.field.add(
                    name="key",
                    number=1,
                    type=F.TYPE_STRING,
                    label=F.LABEL_OPTIONAL,
                    json_name="key",
                )
                entry.field.add(
                    name="value",
                    number=2,
                    type=F.TYPE_STRING,
                    label=F.LABEL_OPTIONAL,
                    json_name="value",
                )
                fp.label = F.LABEL_REPEATED
                fp.type = F.TYPE_MESSAGE
                fp.type_name = f".{proto.package}.{msg.name}.{entry_name}"
            elif field.type in _SCALARS:
                fp.type = _SCALARS[field.type]
            elif field.type in proto.enums:
                fp.type = F.TYPE_ENUM
                fp.type_name = f".{proto.package}.{field.type}"
            else:
                fp.type = F.TYPE_MESSAGE
                fp.type_name = f".{proto.package}.{field.type}"
            group = field.oneof
            if field.label == "optional":
                group = f"_{field.name}"
                fp.proto3_optional = True
            if group is not None:
                if group not in oneof_index:
                    oneof_index[group] = len(dp.oneof_decl)
                    dp.oneof_decl.add(name=group)
                fp.oneof_index = oneof_index[group]
    for service, rpcs in proto.services.items():
        sp = fd.service.add(name=service)
        for rpc in rpcs:
            sp.method.add(
                name=rpc.name,
                input_type=f".{proto.package}.{rpc.request}",
                output_type=f".{proto.package}.{rpc.response}",
                client_streaming=rpc.client_streaming,
                server_streaming=rpc.server_streaming,
            )
    return fd


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def message_classes(proto: ProtoFile) -> dict[str, Any]:
    """protobuf message classes for every message of the parsed file."""
    from google.protobuf import descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    file = pool.Add(file_descriptor(proto))
    del file
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{proto.package}.{name}"))
        for name in proto.messages
    }
